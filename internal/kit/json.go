package kit

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/hookstream/hookstream/domain"
)

// DecodeError turns a JSON decoding error into the API's error: ETooLarge
// for a body over its limit, otherwise EInvalid naming the problem.
func DecodeError(err error) error {
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
	case strings.HasPrefix(err.Error(), unknownFieldPrefix):
		// encoding/json has no error type for DisallowUnknownFields; its
		// message is the only way to tell this case, and is stable API text.
		return domain.Errorf(domain.EInvalid, "Invalid body: unknown field %s", strings.TrimPrefix(err.Error(), unknownFieldPrefix))
	}
	return domain.Errorf(domain.EInvalid, "Invalid body: %v", err)
}

const unknownFieldPrefix = "json: unknown field "

// FieldDecodeError is DecodeError for a JSON object nested in the body at
// field: a member of the wrong type is named field.member. ok is false when
// the error names no member.
func FieldDecodeError(err error, field string) (_ error, ok bool) {
	var typ *json.UnmarshalTypeError
	if !errors.As(err, &typ) || typ.Field == "" {
		return nil, false
	}
	return domain.Errorf(domain.EInvalid, "Invalid body: '%s.%s' must be %s", field, typ.Field, jsonTypeName(typ.Type.String())), true
}

func jsonTypeName(goType string) string {
	goType = strings.TrimPrefix(goType, "*")
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case strings.HasPrefix(goType, "map["):
		return "an object"
	case strings.Contains(goType, "int"), strings.Contains(goType, "float"):
		return "a number"
	case strings.Contains(goType, "bool"):
		return "a boolean"
	case strings.Contains(goType, "string"):
		return "a string"
	}
	return "of another type"
}
