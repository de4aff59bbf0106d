package handlers_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// POST /v1/destinations/{id}/test sends a sample webhook through the normal
// pipeline to that destination alone and answers its attempt: the outcome
// (default), or pending with wait=false. The event is a real one, listed
// under the connection's source. Refusals: a paused destination (409),
// another tenant's (404), a connection of another destination (400),
// a body that is not JSON (400).
func TestDestinationTestSendsThroughThePipeline(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ok, failing, other := newSink(t), newSink(t, 500, 500, 500, 500), newSink(t)
	src, destID := h.route(ok.srv.URL, nil, nil)
	// Another destination on the same source must not get the test.
	d2 := h.mustCreate("/v1/destinations", map[string]any{"name": "other", "url": other.srv.URL})
	conn2 := h.mustCreate("/v1/connections", map[string]any{"name": "other", "source_id": src, "destination_id": d2["id"]})

	code, out := h.do("POST", "/v1/destinations/"+destID+"/test", h.key, nil)
	a, _ := out["delivery_attempt"].(map[string]any)
	if code != 200 || a["status"] != "success" || num(a["response_status"]) != 200 || a["destination_id"] != destID {
		t.Fatalf("test = %d %v", code, out)
	}
	if ok.count() != 1 || !strings.Contains(ok.bodies[0], `"type":"hookstream.test"`) || other.count() != 0 {
		t.Fatalf("destination got %d requests %v; the other %d", ok.count(), ok.bodies, other.count())
	}
	_, ev := h.do("GET", "/v1/events/"+out["event_id"].(string), h.key, nil)
	if e := ev["event"].(map[string]any); e["source_id"] != src {
		t.Fatalf("test event = %v, want one of source %s", e, src)
	}
	// A payload of one's own, not waited for.
	code, out = h.do("POST", "/v1/destinations/"+destID+"/test?wait=false", h.key, map[string]any{"payload": map[string]any{"hello": "world"}})
	if a := out["delivery_attempt"].(map[string]any); code != 200 || (a["status"] != "pending" && a["status"] != "success") {
		t.Fatalf("test without waiting = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "the second test delivered", func() bool { return ok.count() == 2 })
	if ok.bodies[1] != `{"hello":"world"}` {
		t.Fatalf("payload sent = %q", ok.bodies[1])
	}
	// A failing destination: the attempt says so, and its retries follow the policy.
	fd := h.mustCreate("/v1/destinations", map[string]any{"name": "failing", "url": failing.srv.URL, "retry_intervals": []int{0},
		"retry_backoff_type": "fixed", "retry_max_attempts": 1, "circuit_breaker_enabled": false})
	code, out = h.do("POST", "/v1/destinations/"+fd["id"].(string)+"/test", h.key, nil)
	if a := out["delivery_attempt"].(map[string]any); code != 200 || a["status"] != "failed" || num(a["response_status"]) != 500 {
		t.Fatalf("test of a failing destination = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "the retry and the dead letter", func() bool {
		return len(h.attempts("delivery_id="+out["delivery_id"].(string)+"&is_dlq=1")) == 1
	})
	// Refusals.
	if code, out := h.do("POST", "/v1/destinations/"+destID+"/test", h.key, map[string]any{"connection_id": conn2["id"]}); code != 400 {
		t.Errorf("another destination's connection = %d %v", code, out)
	}
	if code, out := h.do("POST", "/v1/destinations/"+destID+"/test", newKey(t, h.pool, ""), nil); code != 404 {
		t.Errorf("another tenant's destination = %d %v", code, out)
	}
	if code, _, _ := h.send("POST", "/v1/destinations/"+destID+"/test", map[string]string{"X-API-Key": h.key}, `{"payload":`); code != 400 {
		t.Errorf("a body that is not JSON = %d", code)
	}
	if code, out := h.do("PATCH", "/v1/destinations/"+destID, h.key, map[string]any{"status": "paused"}); code != 200 {
		t.Fatalf("pause = %d %v", code, out)
	}
	if code, out := h.do("POST", "/v1/destinations/"+destID+"/test", h.key, nil); code != 409 || !strings.Contains(fmt.Sprint(out["error"]), "paused") {
		t.Errorf("a paused destination = %d %v", code, out)
	}
}
