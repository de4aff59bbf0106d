package kit

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hookstream/hookstream/domain"
)

func decode(body string, dst any) error {
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

func TestDecodeErrorNamesTheProblem(t *testing.T) {
	type in struct {
		Name  *string `json:"name"`
		Count *int    `json:"count"`
	}
	for body, want := range map[string]string{
		`{"count":"x"}`: "Invalid body: 'count' must be a number",
		`{"nope":1}`:    `Invalid body: unknown field "nope"`,
		`{"name":`:      "Invalid body: malformed JSON (unexpected end)",
		`[1]`:           "Invalid body: expected a JSON object",
		`{"name":}`:     "Invalid body: malformed JSON at byte 9",
	} {
		var v in
		err := DecodeError(decode(body, &v))
		if domain.ErrorCode(err) != domain.EInvalid || domain.ErrorMessage(err) != want {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
	// A body over its limit is ETooLarge, whatever the JSON.
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "/", strings.NewReader(`{"name":"`+strings.Repeat("a", 100)+`"}`))
	var v in
	err := DecodeError(json.NewDecoder(http.MaxBytesReader(rec, r.Body, 10)).Decode(&v))
	if domain.ErrorCode(err) != domain.ETooLarge {
		t.Errorf("over the limit: %v", err)
	}
}

func TestFieldDecodeErrorPrefixesOnlyMembers(t *testing.T) {
	var v struct {
		Mode *string `json:"mode"`
	}
	err, ok := FieldDecodeError(decode(`{"mode":1}`, &v), "signing_config")
	if !ok || domain.ErrorMessage(err) != "Invalid body: 'signing_config.mode' must be a string" {
		t.Errorf("typed member: %v %v", err, ok)
	}
	if _, ok := FieldDecodeError(decode(`{"other":1}`, &v), "signing_config"); ok {
		t.Error("an unknown field names no member")
	}
}
