package handlers_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
)

// fuzzSeed fixes the run: a failure names the request, and the same seed
// sends the same requests again.
const fuzzSeed = 20261201

// hostile are values no handler may answer with a 5xx: text PostgreSQL
// cannot hold, numbers out of range, wrong types, sizes past the limits.
var hostile = []string{"", "%00", "%ff", "%c3%28", "a%00b", "-1", "0", "1", "99999999999999999999", "1e400", "true",
	"null", "nope", "0123456789abcdef0123456789abcdef", strings.Repeat("x", 3000), "%E2%80%AE", "2026-13-45T99:99:99Z"}

var hostileBodies = []string{"", "{", "null", "[]", "[{}]", `"x"`, "1", `{"name":1}`, `{"name":"\u0000"}`, `{"name":"ok","url":7}`,
	`{"status":"paused"}`, `{"filter_rules":"x"}`, `{"retry_intervals":[-1,1e20]}`, `{"headers":{"a":["b"]}}`, "{\"name\":\"\xff\xfe\"}",
	`{"destination_id":"nope","from":"x","to":"y"}`, `{"signing_config":{"mode":7}}`, `{"api_key":{}}`, strings.Repeat(`{"a":`, 5000)}

// unvalidated serves the harness's service without the OpenAPI validator:
// the fuzz sends requests the document does not describe on purpose, and
// asserts only what it is for (no 5xx, nothing accepted lost).
func unvalidated(t *testing.T, h *harness) string {
	srv := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: h.svc, Pool: h.pool,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Every documented route, with hostile ids, query values and bodies: no 5xx.
func TestFuzzAPINeverAnswers5xx(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	api := unvalidated(t, h)
	src, dest := h.route("http://127.0.0.1:1/hook", nil, nil)
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(handlers.OpenAPIJSON, &doc); err != nil {
		t.Fatal(err)
	}
	type op struct{ method, path string }
	var ops []op
	for path, methods := range doc.Paths {
		for m := range methods {
			if m == "parameters" || strings.HasPrefix(path, "/v1/ingest") || path == "/v1/auth/logout" {
				continue // ingest has its own fuzz; logging out would end the key's sessions, not a fault
			}
			ops = append(ops, op{strings.ToUpper(m), path})
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].path+ops[i].method < ops[j].path+ops[j].method })
	ids := append([]string{src, dest}, hostile...)
	rng := rand.New(rand.NewPCG(fuzzSeed, 1))
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	const requests = 2000
	var fives []string
	for i := 0; i < requests; i++ {
		o := ops[i%len(ops)]
		path := o.path
		for strings.Contains(path, "{") {
			a, b := strings.Index(path, "{"), strings.Index(path, "}")
			path = path[:a] + pick(ids) + path[b+1:]
		}
		q := []string{}
		for n := rng.IntN(4); n > 0; n-- {
			q = append(q, pick([]string{"limit", "offset", "status", "is_dlq", "event_id", "destination_id", "source_id", "after",
				"before", "wait", "window", "bucket", "junk"})+"="+pick(hostile))
		}
		if len(q) > 0 {
			path += "?" + strings.Join(q, "&")
		}
		body := ""
		if o.method != http.MethodGet && o.method != http.MethodDelete {
			body = pick(hostileBodies)
		}
		req, err := http.NewRequest(o.method, api+path, strings.NewReader(body))
		if err != nil {
			continue // not a URL a client can send
		}
		req.Header.Set("X-API-Key", h.key)
		req.Header.Set("Content-Type", pick([]string{"application/json", "text/plain", ""}))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", o.method, path, err)
		}
		var raw []byte
		if resp.Header.Get("Content-Type") != "text/event-stream" { // a live tail streams until the client leaves
			raw, _ = io.ReadAll(resp.Body)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			fives = append(fives, fmt.Sprintf("%s %s body %.80q -> %d %s", o.method, path, body, resp.StatusCode, raw))
		}
	}
	if len(fives) > 0 {
		t.Errorf("%d of %d requests answered 5xx (seed %d), first: %v", len(fives), requests, fuzzSeed, fives[:min(5, len(fives))])
	}
}

// Public ingest with hostile bodies, queries and headers: no 5xx, and every
// webhook answered 200 is delivered.
func TestFuzzIngestKeepsEveryAcceptedWebhook(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	api := unvalidated(t, h)
	rng := rand.New(rand.NewPCG(fuzzSeed, 2))
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	const requests = 300
	accepted := 0
	var fives []string
	for i := 0; i < requests; i++ {
		body := make([]byte, rng.IntN(2048))
		for j := range body {
			body[j] = byte(rng.IntN(256))
		}
		if rng.IntN(2) == 0 {
			body = []byte(pick(hostileBodies))
		}
		path := "/v1/ingest/" + src + "?" + pick([]string{"a", "b", "%00"}) + "=" + pick(hostile)
		req, err := http.NewRequest(pick([]string{"POST", "PUT", "PATCH", "GET", "DELETE"}), api+path, strings.NewReader(string(body)))
		if err != nil {
			continue
		}
		req.Header.Set("Content-Type", pick([]string{"application/json", "text/plain", "application/x-www-form-urlencoded", ""}))
		req.Header.Set("X-Fuzz", "value-\xff\xfe-"+fmt.Sprint(i)) // obs-text: not UTF-8
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("ingest %d: %v", i, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode >= 500:
			fives = append(fives, fmt.Sprintf("%s %s -> %d %s", req.Method, path, resp.StatusCode, raw))
		case resp.StatusCode == 200:
			accepted++
		}
	}
	if len(fives) > 0 {
		t.Fatalf("%d of %d ingests answered 5xx (seed %d), first: %v", len(fives), requests, fuzzSeed, fives[:min(5, len(fives))])
	}
	if accepted == 0 {
		t.Fatal("no webhook accepted: the fuzz sent nothing ingest takes")
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("all %d accepted webhooks delivered", accepted), func() bool { return dst.count() >= accepted })
}
