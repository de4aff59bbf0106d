package api

import (
	"bytes"
	"encoding/json"

	"io"
	"net/http"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
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
		return kit.DecodeError(err)
	}
	if dec.More() {
		return domain.Errorf(domain.EInvalid, "Invalid body: unexpected data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return domain.Errorf(domain.EInvalid, "Invalid body: unexpected data after the JSON object")
	}
	return checkStrings(dst)
}

// decodeBytes is decodeJSON for a body already read.
func decodeBytes(b []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return kit.DecodeError(err)
	}
	return checkStrings(dst)
}
