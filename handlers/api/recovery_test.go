package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAPIHandlerPanicIsA500WithTheRequestID(t *testing.T) {
	var logged strings.Builder
	a := New(Params{Service: &Services{}, Log: slog.New(slog.NewTextHandler(&logged, nil))})
	a.router.HandleFunc("/v1/boom", func(http.ResponseWriter, *http.Request) { panic("boom") })
	srv := httptest.NewServer(a)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/boom")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body errorBody
	if err := json.Unmarshal(raw, &body); err != nil || resp.StatusCode != 500 || body.Error != "Internal error" ||
		body.RequestID == "" || body.RequestID != resp.Header.Get("X-Request-Id") {
		t.Fatalf("panic answered %d %s (%v)", resp.StatusCode, raw, err)
	}
	if !strings.Contains(logged.String(), "boom") || !strings.Contains(logged.String(), body.RequestID) {
		t.Fatalf("panic not logged with its request id: %s", logged.String())
	}
	// The server still serves.
	if resp, err := http.Get(srv.URL + "/v1/boom"); err != nil || resp.StatusCode != 500 {
		t.Fatalf("second request: %v", err)
	}
}
