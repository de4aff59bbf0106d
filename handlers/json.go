package handlers

import (
	"encoding/json"
	"errors"

	"io"
	"net/http"
	"strings"

	"github.com/hookstream/hookstream/domain"
)

// maxAPIBody bounds JSON request bodies of the management API.
const maxAPIBody = 1 << 20

// decodeJSON reads one JSON object into dst: unknown fields, wrong types,
// trailing data and bodies over maxAPIBody are errors that name the problem.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	body := http.MaxBytesReader(w, r.Body, maxAPIBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return domain.Errorf(domain.EInvalid, "Invalid body: unexpected data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return domain.Errorf(domain.EInvalid, "Invalid body: unexpected data after the JSON object")
	}
	return checkStrings(dst)
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return domain.Errorf(domain.ETooLarge, "Request body too large (limit %d bytes)", tooBig.Limit)
	case errors.Is(err, io.EOF):
		return domain.Errorf(domain.EInvalid, "Invalid body: expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return domain.Errorf(domain.EInvalid, "Invalid body: malformed JSON (unexpected end)")
	case errors.As(err, &syn):
		return domain.Errorf(domain.EInvalid, "Invalid body: malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return domain.Errorf(domain.EInvalid, "Invalid body: expected a JSON object")
		}
		return domain.Errorf(domain.EInvalid, "Invalid body: '%s' must be %s", typ.Field, jsonTypeName(typ.Type.String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return domain.Errorf(domain.EInvalid, "Invalid body: unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return domain.Errorf(domain.EInvalid, "Invalid body: %v", err)
}

func jsonTypeName(goType string) string {
	switch {
	case strings.Contains(goType, "int"), strings.Contains(goType, "float"):
		return "a number"
	case strings.Contains(goType, "bool"):
		return "a boolean"
	case strings.Contains(goType, "string") && strings.HasPrefix(goType, "map"):
		return "an object"
	case strings.HasPrefix(goType, "[]"), strings.HasPrefix(goType, "*[]"):
		return "an array"
	case strings.Contains(goType, "string"):
		return "a string"
	}
	return "of another type"
}
