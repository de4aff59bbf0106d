package handlers_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/hookstream/hookstream/handlers"
)

// The committed document is the one the code generates
// (HOOKSTREAM_UPDATE_OPENAPI=1 rewrites it), and it is a valid OpenAPI 3.1 document.
func TestOpenAPIDocumentIsCurrentAndValid(t *testing.T) {
	want := handlers.MarshalOpenAPI()
	if os.Getenv("HOOKSTREAM_UPDATE_OPENAPI") == "1" {
		if err := os.WriteFile("api/openapi.json", want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(handlers.OpenAPIJSON, want) {
		t.Fatal("handlers/openapi.json is stale: run HOOKSTREAM_UPDATE_OPENAPI=1 go test ./handlers -run OpenAPIDocument")
	}
	doc := loadSpec(t)
	if !doc.IsOpenAPI31OrLater() {
		t.Errorf("openapi = %s, want 3.1", doc.OpenAPI)
	}
}

var (
	specOnce   sync.Once
	specDoc    *openapi3.T
	specRouter routers.Router
	specErr    error
)

func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		specDoc, specErr = loader.LoadFromData(handlers.OpenAPIJSON)
		if specErr == nil {
			specErr = specDoc.Validate(context.Background())
		}
		if specErr == nil {
			specRouter, specErr = gorillamux.NewRouter(specDoc)
		}
	})
	if specErr != nil {
		t.Fatalf("openapi.json: %v", specErr)
	}
	return specDoc
}

// specValidator checks every request the tests send (when the API accepts
// it) and every response against openapi.json: an undocumented route,
// status or field fails the test that caused it.
type specValidator struct {
	t    *testing.T
	next http.Handler
}

func (v *specValidator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/v1/") && r.URL.Path != "/metrics" || r.URL.Path == "/v1/events/tail" {
		// The dashboard's pages are not API; a live tail streams (its
		// events' shape is checked by TestLiveTail).
		v.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	v.next.ServeHTTP(rec, r)
	v.check(r, body, rec)
	for k, vals := range rec.Header() {
		w.Header()[k] = vals
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (v *specValidator) check(r *http.Request, body []byte, rec *httptest.ResponseRecorder) {
	req := r.Clone(context.Background())
	req.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := specRouter.FindRoute(req)
	if err != nil {
		if rec.Code != http.StatusNotFound && rec.Code != http.StatusMethodNotAllowed {
			v.t.Errorf("openapi: %s %s answered %d but is not documented (%v)", r.Method, r.URL.Path, rec.Code, err)
		}
		return
	}
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, MultiError: true}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	if rec.Code < 400 {
		// Refused requests are the tests' bad input on purpose; accepted ones must match the document.
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			v.t.Errorf("openapi: %s %s was accepted (%d) but the request does not match the document: %v", r.Method, r.URL.Path, rec.Code, oneLineErr(err))
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header(),
		Body: io.NopCloser(bytes.NewReader(rec.Body.Bytes())), Options: opts}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		v.t.Errorf("openapi: %s %s answered %d, which does not match the document: %v\n%s", r.Method, r.URL.Path, rec.Code, oneLineErr(err), truncate(rec.Body.String(), 600))
	}
}

func oneLineErr(err error) string {
	return truncate(strings.Join(strings.Fields(err.Error()), " "), 600)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
