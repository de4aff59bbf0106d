package kit

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
)

// Request fields that accept what the API's responses show, so a client can
// send back an object it read: flags appear in responses as 0/1 (the
// hookstream object format) and JSON-valued fields as JSON-encoded strings.

// Flag is a boolean a request may give as true/false or as 1/0.
type Flag bool

// UnmarshalJSON accepts true, false, 1 and 0.
func (f *Flag) UnmarshalJSON(b []byte) error {
	switch string(bytes.TrimSpace(b)) {
	case "true", "1":
		*f = true
	case "false", "0":
		*f = false
	default:
		return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[bool]()}
	}
	return nil
}

// OpenAPISchema is Flag's schema in the generated API document.
func (Flag) OpenAPISchema() map[string]any {
	return map[string]any{"anyOf": []any{map[string]any{"type": "boolean"}, map[string]any{"type": "integer", "enum": []any{0, 1}}}}
}

// JSONOr is a value a request may give as JSON, or as a string holding that
// JSON (how the response shows it).
type JSONOr[T any] struct{ V T }

// UnmarshalJSON decodes T, from the string's content when b is a string.
func (j *JSONOr[T]) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		b = []byte(s)
		if !json.Valid(b) {
			return &json.UnmarshalTypeError{Value: "string", Type: reflect.TypeFor[T]()}
		}
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			// Named by the field that holds it: the caller adds the name.
			return &json.UnmarshalTypeError{Value: typ.Value, Type: reflect.TypeFor[T](), Offset: typ.Offset}
		}
		return err
	}
	j.V = v
	return nil
}

// OpenAPIElem is the type JSONOr carries, for the generated API document
// (the value, or a string).
func (JSONOr[T]) OpenAPIElem() reflect.Type { return reflect.TypeFor[T]() }
