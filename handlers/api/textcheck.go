package api

import (
	"net/http"
	"reflect"
	"strings"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
)

// checkQuery refuses query parameters PostgreSQL cannot hold with a 400
// naming the parameter (the management API; ingest keeps what it gets).
func checkQuery(r *http.Request) error {
	for k, vs := range r.URL.Query() {
		if !kit.Storable(k) {
			return domain.Errorf(domain.EInvalid, "Invalid query: a parameter name contains a NUL byte or invalid UTF-8")
		}
		for _, v := range vs {
			if !kit.Storable(v) {
				return domain.Errorf(domain.EInvalid, "Invalid query: '%s' contains a NUL byte or invalid UTF-8", k)
			}
		}
	}
	return nil
}

// checkStrings walks a decoded request body and refuses any string holding
// a NUL (JSON's \u0000; the decoder already replaced invalid UTF-8), naming
// the field by its JSON path.
func checkStrings(v any) error {
	if path, ok := findNUL(reflect.ValueOf(v), ""); ok {
		return domain.Errorf(domain.EInvalid, "Invalid body: '%s' must not contain NUL characters", strings.TrimPrefix(path, "."))
	}
	return nil
}

func findNUL(v reflect.Value, path string) (string, bool) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return "", false
		}
		return findNUL(v.Elem(), path)
	case reflect.String:
		return path, strings.ContainsRune(v.String(), 0)
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name := strings.Split(f.Tag.Get("json"), ",")[0]
			if name == "" {
				name = f.Name
			}
			if p, ok := findNUL(v.Field(i), path+"."+name); ok {
				return p, true
			}
		}
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			// json.RawMessage: a nested document, checked as text.
			if strings.Contains(string(v.Bytes()), `\u0000`) {
				return path, true
			}
			return "", false
		}
		for i := 0; i < v.Len(); i++ {
			if p, ok := findNUL(v.Index(i), path); ok {
				return p, true
			}
		}
	case reflect.Map:
		iter := v.MapRange()
		for iter.Next() {
			if iter.Key().Kind() == reflect.String && strings.ContainsRune(iter.Key().String(), 0) {
				return path, true
			}
			if p, ok := findNUL(iter.Value(), path+"."+iter.Key().String()); ok {
				return p, true
			}
		}
	}
	return "", false
}
