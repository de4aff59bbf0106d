package handlers_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A source's rate limit, and its environment's, admit a burst of one
// second's worth and then that rate: beyond it ingest answers 429 with
// Retry-After and stores nothing; a limit of 0 removes it.
func TestIngestRateLimitsPerSourceAndEnvironment(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sink := newSink(t)
	src, _ := h.route(sink.srv.URL, nil, nil)
	if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"rate_limit": 5}); code != 200 ||
		num(out["source"].(map[string]any)["rate_limit"]) != 5 {
		t.Fatalf("PATCH rate_limit = %d %v", code, out)
	}
	burst := func(source string, n int) (accepted, limited int, elapsed time.Duration) {
		started := time.Now()
		for i := 0; i < n; i++ {
			code, raw, resp := h.send("POST", "/v1/ingest/"+source, map[string]string{"Content-Type": "application/json"}, `{}`)
			switch code {
			case 200:
				accepted++
			case 429:
				limited++
				if resp.Header.Get("Retry-After") != "1" || !strings.Contains(string(raw), "Rate limit exceeded") {
					t.Fatalf("429 with Retry-After %q: %s", resp.Header.Get("Retry-After"), raw)
				}
			default:
				t.Fatalf("ingest = %d %s", code, raw)
			}
		}
		return accepted, limited, time.Since(started)
	}
	accepted, limited, elapsed := burst(src, 20)
	// One second's worth at once, then what refilled while the burst ran.
	if most := 5 + int(elapsed.Seconds()*5) + 1; accepted < 5 || accepted > most || accepted+limited != 20 {
		t.Fatalf("source limit 5/s: %d accepted, %d limited in %s", accepted, limited, elapsed)
	}
	waitFor(t, 10*time.Second, "the accepted webhooks listed", func() bool { return h.eventCount("") == accepted })
	if got := h.eventCount(""); got != accepted {
		t.Fatalf("%d events stored, %d accepted: a refused webhook was kept", got, accepted)
	}
	waitFor(t, 5*time.Second, "a token back", func() bool {
		code, _, _ := h.send("POST", "/v1/ingest/"+src, map[string]string{"Content-Type": "application/json"}, `{}`)
		return code == 200
	})
	// The environment's limit covers its sources together.
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	if code, out := h.do("PATCH", "/v1/environments/"+sess["env_id"].(string), h.key, map[string]any{"ingest_rate_limit": 3}); code != 200 {
		t.Fatalf("PATCH ingest_rate_limit = %d %v", code, out)
	}
	if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"rate_limit": 0}); code != 200 || out["source"].(map[string]any)["rate_limit"] != nil {
		t.Fatalf("PATCH rate_limit 0 = %d %v", code, out)
	}
	other, _ := h.route(sink.srv.URL, nil, nil)
	h.svc.ForgetRoutes() // (the environment's limit reaches a cached source within a second otherwise)
	a1, _, e1 := burst(src, 4)
	a2, _, e2 := burst(other, 4)
	if most := 3 + int((e1+e2).Seconds()*3) + 1; a1+a2 < 3 || a1+a2 > most {
		t.Fatalf("environment limit 3/s over two sources: %d + %d accepted in %s", a1, a2, e1+e2)
	}
	for _, bad := range []any{-1, 100001, "5"} {
		if code, _ := h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"rate_limit": bad}); code != 400 {
			t.Errorf("rate_limit %v = %d, want 400", bad, code)
		}
	}
	if code, out := h.do("PATCH", "/v1/environments/"+sess["env_id"].(string), h.key, map[string]any{"ingest_rate_limit": -2}); code != 400 ||
		!strings.Contains(fmt.Sprint(out["error"]), "ingest_rate_limit") {
		t.Errorf("ingest_rate_limit -2 = %d %v", code, out)
	}
}
