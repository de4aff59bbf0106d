package handlers_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/issues"
	"github.com/hookstream/hookstream/handlers/redeliver"
)

// switchSink answers 503 while down, 200 once up, and records every request.
type switchSink struct {
	srv      *httptest.Server
	up       atomic.Bool
	mu       sync.Mutex
	failed   int
	failedAt []time.Time
	okEvents map[string]int
	okOrder  []string
}

func newSwitchSink(t *testing.T) *switchSink {
	s := &switchSink{okEvents: map[string]int{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.up.Load() {
			s.failed++
			s.failedAt = append(s.failedAt, time.Now())
			w.WriteHeader(503)
			return
		}
		ev := r.Header.Get("X-hookstream-Event-Id")
		s.okEvents[ev]++
		s.okOrder = append(s.okOrder, ev)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *switchSink) counts() (failed, ok int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed, len(s.okOrder)
}

func (h *harness) circuit(dest string) map[string]any {
	h.t.Helper()
	code, out := h.do("GET", "/v1/destinations/"+dest+"/circuit", h.key, nil)
	if code != 200 {
		h.t.Fatalf("GET circuit = %d %v", code, out)
	}
	return out
}

func TestCircuitBreakerHoldsDeliveriesUntilAProbeSucceeds(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSwitchSink(t)
	src, dest := h.route(dst.srv.URL, map[string]any{"circuit_breaker_threshold": 3, "circuit_breaker_reset_ms": 60000,
		"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "retry_max_attempts": 10}, nil)
	if c := h.circuit(dest); c["state"] != "closed" || num(c["failure_count"]) != 0 {
		t.Fatalf("new circuit = %v", c)
	}
	var first []string
	for i := 0; i < 3; i++ {
		first = append(first, h.ingest(src, fmt.Sprintf(`{"first":%d}`, i)))
	}
	waitFor(t, 10*time.Second, "the circuit to open", func() bool { return h.circuit(dest)["state"] == "open" })
	c := h.circuit(dest)
	if num(c["failure_count"]) < 3 || c["opened_at"] == nil || c["last_transition_at"] == nil {
		t.Errorf("open circuit = %v", c)
	}
	failedAtOpen, _ := dst.counts()
	// While open, new deliveries queue: no request, no attempt.
	var held []string
	for i := 0; i < 3; i++ {
		held = append(held, h.ingest(src, fmt.Sprintf(`{"held":%d}`, i)))
	}
	waitFor(t, 5*time.Second, "the held deliveries to show pending", func() bool {
		return len(h.attempts("event_id="+held[2])) == 1
	})
	waitFor(t, 5*time.Second, "the queue in the circuit", func() bool { return num(h.circuit(dest)["queued_deliveries"]) == 6 })
	if failed, _ := dst.counts(); failed != failedAtOpen {
		t.Fatalf("%d requests went out while the circuit was open", failed-failedAtOpen)
	}
	// A manual retry is the probe; the destination has recovered.
	dst.up.Store(true)
	failedAttempt := h.attempts("event_id=" + first[0] + "&status=failed")[0]["id"].(string)
	code, out := h.do("POST", "/v1/delivery-attempts/"+failedAttempt+"/retry", h.key, nil)
	if code != 200 || out["delivery_attempt"].(map[string]any)["status"] != "success" {
		t.Fatalf("probe retry = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "every delivery after the circuit closed", func() bool { _, ok := dst.counts(); return ok == 6 })
	h.quiet(10 * time.Second)
	if c := h.circuit(dest); c["state"] != "closed" || num(c["failure_count"]) != 0 {
		t.Errorf("circuit after the probe = %v", c)
	}
	failed, _ := dst.counts()
	if failed != failedAtOpen {
		t.Errorf("%d failed requests after the circuit opened, want none", failed-failedAtOpen)
	}
	for _, ev := range append(first, held...) {
		if dst.okEvents[ev] != 1 {
			t.Errorf("event %s delivered %d times", ev, dst.okEvents[ev])
		}
	}
	for _, ev := range held {
		a := h.attempts("event_id=" + ev)
		if len(a) != 1 || num(a[0]["attempt_number"]) != 1 || a[0]["status"] != "success" {
			t.Errorf("a held delivery spent attempts: %v", a)
		}
	}
	// Every failed attempt is a request the destination saw: none spent while open.
	var failedAttempts int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM delivery_attempts WHERE destination_id = $1 AND status = 'failed'`, dest).Scan(&failedAttempts); err != nil {
		t.Fatal(err)
	}
	if failedAttempts != failed {
		t.Errorf("%d failed attempts recorded, %d failed requests made", failedAttempts, failed)
	}
	// The transitions are events.
	var types []string
	rows, _ := h.pool.Query(context.Background(), `SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version`, "circuit_"+dest)
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		types = append(types, s)
	}
	rows.Close()
	if strings.Join(types, ",") != "CircuitOpened,CircuitHalfOpened,CircuitClosed" {
		t.Errorf("circuit events = %v", types)
	}
}

func TestCircuitHalfOpenProbeAfterCooldown(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSwitchSink(t)
	// Retries wait 1 s, so only first attempts can be in flight when the circuit opens.
	src, dest := h.route(dst.srv.URL, map[string]any{"circuit_breaker_threshold": 2, "circuit_breaker_reset_ms": 300,
		"retry_intervals": []int{1}, "retry_backoff_type": "fixed", "retry_max_attempts": 10}, nil)
	evs := []string{h.ingest(src, `{"a":1}`), h.ingest(src, `{"a":2}`), h.ingest(src, `{"a":3}`)}
	waitFor(t, 10*time.Second, "the circuit to open", func() bool { return h.circuit(dest)["state"] == "open" })
	// Each cooldown lets exactly one probe out; it fails and re-opens the circuit.
	waitFor(t, 10*time.Second, "two failed probes", func() bool {
		var n int
		_ = h.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'CircuitHalfOpened'`, "circuit_"+dest).Scan(&n)
		return n >= 2 && h.circuit(dest)["state"] == "open"
	})
	// After the circuit first opened, only probes reach the destination:
	// one per half-open transition (a request already in flight when it
	// opened may land just after).
	var firstOpen time.Time
	var halfOpened, failedAttempts int
	_ = h.pool.QueryRow(context.Background(), `SELECT min(recorded_at) FILTER (WHERE event_type = 'CircuitOpened'),
		count(*) FILTER (WHERE event_type = 'CircuitHalfOpened') FROM events WHERE stream_id = $1`, "circuit_"+dest).Scan(&firstOpen, &halfOpened)
	dst.mu.Lock()
	after := 0
	for _, at := range dst.failedAt {
		if at.After(firstOpen) {
			after++
		}
	}
	dst.mu.Unlock()
	if after > halfOpened+1 {
		t.Errorf("%d failed requests after the circuit opened, for %d half-open probes", after, halfOpened)
	}
	dst.up.Store(true)
	waitFor(t, 10*time.Second, "the queue to drain after a successful probe", func() bool { _, ok := dst.counts(); return ok == 3 })
	if c := h.circuit(dest); c["state"] != "closed" {
		t.Errorf("circuit = %v", c)
	}
	for _, ev := range evs {
		if dst.okEvents[ev] != 1 {
			t.Errorf("event %s delivered %d times", ev, dst.okEvents[ev])
		}
	}
	// Every failed request is one failed attempt (the read model may lag the
	// last one by a projector batch).
	failed, _ := dst.counts()
	waitFor(t, 10*time.Second, "one failed attempt per failed request", func() bool {
		_ = h.pool.QueryRow(context.Background(), `SELECT count(*) FROM delivery_attempts WHERE destination_id = $1 AND status = 'failed'`, dest).Scan(&failedAttempts)
		return failedAttempts == failed
	})
	// Reset by hand.
	if code, out := h.do("POST", "/v1/destinations/"+dest+"/circuit/reset", h.key, nil); code != 200 || out["state"] != "closed" {
		t.Errorf("reset = %d %v", code, out)
	}
	if code, _ := h.do("GET", "/v1/destinations/0123456789abcdef0123456789abcdef/circuit", h.key, nil); code != 404 {
		t.Errorf("unknown destination's circuit = %d", code)
	}
}

// signedSink records each request's headers and raw body.
type signedSink struct {
	srv     *httptest.Server
	mu      sync.Mutex
	headers []http.Header
	bodies  [][]byte
}

func newSignedSink(t *testing.T) *signedSink {
	s := &signedSink{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.headers, s.bodies = append(s.headers, r.Header.Clone()), append(s.bodies, b)
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *signedSink) last() (http.Header, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.headers[len(s.headers)-1], s.bodies[len(s.bodies)-1]
}

func (s *signedSink) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.bodies) }

func TestOutboundSigning(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSignedSink(t)
	src, dest := h.route(dst.srv.URL, map[string]any{"signing_config": map[string]any{"secret": "topsecret-value", "include_timestamp": true}}, nil)
	_, out := h.do("GET", "/v1/destinations/"+dest, h.key, nil)
	if sc := out["destination"].(map[string]any)["signing_config"].(map[string]any); sc["secret"] != "****alue" || sc["header"] != "X-hookstream-Signature" {
		t.Errorf("signing_config shown = %v (the secret must be masked)", sc)
	}
	ev := h.ingest(src, `{"signed":true}`)
	waitFor(t, 10*time.Second, "the signed delivery", func() bool { return dst.count() == 1 })
	hd, body := dst.last()
	ts := hd.Get("X-hookstream-Signature-Timestamp")
	m := hmac.New(sha256.New, []byte("topsecret-value"))
	m.Write([]byte(ts + "." + string(body)))
	if want := "sha256=" + fmt.Sprintf("%x", m.Sum(nil)); ts == "" || hd.Get("X-hookstream-Signature") != want {
		t.Errorf("HMAC signature = %q (timestamp %q), want %q", hd.Get("X-hookstream-Signature"), ts, want)
	}
	if _, err := time.Parse(time.RFC3339, hd.Get("X-hookstream-Timestamp")); err != nil {
		t.Errorf("X-hookstream-Timestamp = %q, want ISO 8601", hd.Get("X-hookstream-Timestamp"))
	}
	waitFor(t, 5*time.Second, "the attempt", func() bool {
		return len(h.attempts("event_id="+ev)) == 1 && h.attempts("event_id=" + ev)[0]["status"] == "success"
	})
	if rh := h.attempts("event_id=" + ev)[0]["request_headers"].(string); strings.Contains(rh, hd.Get("X-hookstream-Signature")[7:]) {
		t.Errorf("the recorded request headers hold the signature: %s", rh)
	}

	// Standard Webhooks, then a rotation: both signatures during the grace period.
	key1, key2 := []byte("first key for the signing test!!"), []byte("second key for the signing test!")
	secret1, secret2 := "whsec_"+base64.StdEncoding.EncodeToString(key1), "whsec_"+base64.StdEncoding.EncodeToString(key2)
	if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"signing_config": map[string]any{"mode": "standard_webhooks", "secret": secret1}}); code != 200 {
		t.Fatalf("PATCH = %d %v", code, out)
	}
	verify := func(hd http.Header, body []byte, key []byte) bool {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(hd.Get("webhook-id") + "." + hd.Get("webhook-timestamp") + "." + string(body)))
		want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
		for _, s := range strings.Fields(hd.Get("webhook-signature")) {
			if hmac.Equal([]byte(s), []byte(want)) {
				return true
			}
		}
		return false
	}
	h.ingest(src, `{"sw":1}`)
	waitFor(t, 10*time.Second, "the Standard Webhooks delivery", func() bool { return dst.count() == 2 })
	hd, body = dst.last()
	if !verify(hd, body, key1) || hd.Get("webhook-id") != hd.Get("X-hookstream-Delivery-Id") || len(strings.Fields(hd.Get("webhook-signature"))) != 1 {
		t.Errorf("Standard Webhooks headers = %v", hd)
	}
	if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"signing_config": map[string]any{"secret": secret2}}); code != 200 {
		t.Fatalf("rotate = %d %v", code, out)
	}
	h.ingest(src, `{"sw":2}`)
	waitFor(t, 10*time.Second, "the delivery after the rotation", func() bool { return dst.count() == 3 })
	hd, body = dst.last()
	if !verify(hd, body, key1) || !verify(hd, body, key2) || len(strings.Fields(hd.Get("webhook-signature"))) != 2 {
		t.Errorf("after rotation, signatures %q do not verify with both secrets", hd.Get("webhook-signature"))
	}
	// No grace: the old secret stops at once.
	h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"signing_config": map[string]any{"secret": secret1, "rotation_grace_seconds": 0}})
	h.ingest(src, `{"sw":3}`)
	waitFor(t, 10*time.Second, "the delivery after the second rotation", func() bool { return dst.count() == 4 })
	if hd, body = dst.last(); !verify(hd, body, key1) || verify(hd, body, key2) {
		t.Errorf("after a rotation without grace: %q", hd.Get("webhook-signature"))
	}
	for _, bad := range []map[string]any{{"mode": "rsa", "secret": "x"}, {"secret": ""}, {"mode": "standard_webhooks", "secret": "plain"},
		{"secret": "x", "mode": "hmac", "timestamp_header": "X-hookstream-Timestamp"}, {"secret": "x", "mode": "hmac", "algorithm": "md5"}, {"secret": "x", "bogus": 1}} {
		if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"signing_config": bad}); code != 400 {
			t.Errorf("signing_config %v = %d %v", bad, code, out)
		}
	}
	if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"signing_config": nil}); code != 200 || out["destination"].(map[string]any)["signing_config"] != nil {
		t.Errorf("removing signing = %d %v", code, out)
	}
	// The log never holds a secret.
	var leaks int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE payload::text LIKE '%topsecret%' OR payload::text LIKE '%whsec_%'`).Scan(&leaks); err != nil || leaks != 0 {
		t.Errorf("%d events hold a signing secret (%v)", leaks, err)
	}
}

func TestReceiverSignals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var calls atomic.Int32
	limited := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(429)
			return
		}
	}))
	t.Cleanup(limited.Close)
	src, _ := h.route(limited.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed"}, nil)
	ev := h.ingest(src, `{}`)
	waitFor(t, 15*time.Second, "the retry after Retry-After", func() bool { return h.eventStatus(ev) == "delivered" })
	first := byNumber(h.attempts("event_id="+ev), 1)
	created, _ := time.Parse(time.RFC3339, first["created_at"].(string))
	next, _ := time.Parse(time.RFC3339, first["next_retry_at"].(string))
	if d := next.Sub(created); d < 3*time.Second || d > 4*time.Second {
		t.Errorf("the retry was planned %s after the 429 with Retry-After: 3 (policy: 0 s)", d)
	}

	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(410) }))
	t.Cleanup(gone.Close)
	src, dest := h.route(gone.URL, nil, nil)
	ev = h.ingest(src, `{}`)
	waitFor(t, 10*time.Second, "the 410 to dead-letter", func() bool { return len(h.attempts("event_id="+ev+"&is_dlq=1")) == 1 })
	_, out := h.do("GET", "/v1/destinations/"+dest, h.key, nil)
	if d := out["destination"].(map[string]any); d["status"] != "disabled" || !strings.Contains(fmt.Sprint(d["disabled_reason"]), "410") {
		t.Errorf("destination after a 410 = %v", d)
	}
	if a := h.attempts("event_id=" + ev); len(a) != 1 {
		t.Errorf("a 410 was retried: %v", a)
	}
	// New webhooks skip the disabled destination, and the event says why.
	ev2 := h.ingest(src, `{}`)
	var payload string
	if err := h.pool.QueryRow(context.Background(), `SELECT payload::text FROM events WHERE stream_id = $1`, ev2).Scan(&payload); err != nil || !strings.Contains(payload, "destination disabled") {
		t.Errorf("event for a disabled destination = %s (%v)", payload, err)
	}

	// Errors are classified.
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(tlsSrv.Close)
	closed := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	closedURL := closed.URL
	closed.Close()
	for _, c := range []struct{ url, want string }{
		{tlsSrv.URL, "TLS error"},
		{closedURL, "connection error"},
		{"http://no-such-host.invalid/hook", "DNS error"},
	} {
		src, _ := h.route(c.url, map[string]any{"retry_enabled": false}, nil)
		ev := h.ingest(src, `{}`)
		waitFor(t, 10*time.Second, "the failed attempt to "+c.url, func() bool { return len(h.attempts("event_id="+ev+"&status=failed")) == 1 })
		if e := fmt.Sprint(h.attempts("event_id=" + ev)[0]["error"]); !strings.Contains(e, c.want) {
			t.Errorf("error for %s = %q, want %q", c.url, e, c.want)
		}
	}
}

func TestPauseHoldsAndResumeReleases(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, dest := h.route(dst.srv.URL, nil, nil)
	_, out := h.do("GET", "/v1/connections?source_id="+src, h.key, nil)
	conn := out["connections"].([]any)[0].(map[string]any)["id"].(string)
	for _, c := range []struct{ path, what string }{{"/v1/connections/" + conn, "connection"}, {"/v1/destinations/" + dest, "destination"},
		{"/v1/sources/" + src, "source"}} {
		before := dst.count()
		if code, out := h.do("PATCH", c.path, h.key, map[string]any{"status": "paused"}); code != 200 {
			t.Fatalf("pause %s = %d %v", c.what, code, out)
		}
		var evs []string
		for i := 0; i < 3; i++ {
			evs = append(evs, h.ingest(src, fmt.Sprintf(`{"%s":%d}`, c.what, i)))
		}
		waitFor(t, 5*time.Second, "the held deliveries pending", func() bool { return len(h.attempts("event_id="+evs[2])) == 1 })
		var due int
		_ = h.pool.QueryRow(context.Background(), `SELECT count(*) FROM delivery_jobs WHERE destination_id = $1 AND state = 'scheduled'`, dest).Scan(&due)
		if due != 3 || dst.count() != before {
			t.Fatalf("paused %s: %d jobs held, %d requests sent", c.what, due, dst.count()-before)
		}
		if code, _ := h.do("PATCH", c.path, h.key, map[string]any{"status": "active"}); code != 200 {
			t.Fatal("resume failed")
		}
		waitFor(t, 10*time.Second, "the held deliveries after resume", func() bool { return dst.count() == before+3 })
		// Released in due order; the receiver's own concurrency may still
		// reorder them, so the order is not asserted here.
		dst.mu.Lock()
		got := map[string]bool{}
		for _, hd := range dst.headers[before:] {
			got[hd.Get("X-hookstream-Event-Id")] = true
		}
		dst.mu.Unlock()
		for _, ev := range evs {
			if !got[ev] {
				t.Errorf("%s resume: event %s not delivered", c.what, ev)
			}
		}
		h.quiet(10 * time.Second)
		for _, ev := range evs {
			if a := h.attempts("event_id=" + ev); len(a) != 1 || num(a[0]["attempt_number"]) != 1 {
				t.Errorf("%s pause spent attempts: %v", c.what, a)
			}
		}
	}
	// Disabled drops new deliveries and records why.
	h.do("PATCH", "/v1/connections/"+conn, h.key, map[string]any{"status": "disabled"})
	ev := h.ingest(src, `{"dropped":true}`)
	var payload string
	if err := h.pool.QueryRow(context.Background(), `SELECT payload::text FROM events WHERE stream_id = $1`, ev).Scan(&payload); err != nil || !strings.Contains(payload, "connection disabled") {
		t.Errorf("event for a disabled connection = %s (%v)", payload, err)
	}
	waitFor(t, 5*time.Second, "the dropped event listed", func() bool { return h.eventStatus(ev) == "received" })
}

func TestIssuesGroupRetryAndAutoResolve(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	down := newSwitchSink(t)
	notFound := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }))
	t.Cleanup(notFound.Close)
	noRetry := map[string]any{"retry_enabled": false, "circuit_breaker_enabled": false}
	src5, dest5 := h.route(down.srv.URL, noRetry, nil)
	src4, _ := h.route(notFound.URL, map[string]any{"retry_enabled": false, "circuit_breaker_enabled": false}, nil)
	for i := 0; i < 3; i++ {
		h.ingest(src5, fmt.Sprintf(`{"i":%d}`, i))
	}
	h.ingest(src4, `{}`)
	var list []any
	waitFor(t, 10*time.Second, "two issues", func() bool {
		_, out := h.do("GET", "/v1/issues", h.key, nil)
		list = out["issues"].([]any)
		total := 0
		for _, it := range list {
			total += num(it.(map[string]any)["occurrence_count"])
		}
		return len(list) == 2 && total == 4
	})
	var issue5 map[string]any
	for _, it := range list {
		m := it.(map[string]any)
		if m["error_type"] == "http_5xx" {
			issue5 = m
		} else if m["error_type"] != "http_4xx" || num(m["occurrence_count"]) != 1 {
			t.Errorf("4xx issue = %v", m)
		}
	}
	if issue5 == nil || num(issue5["occurrence_count"]) != 3 || issue5["destination_id"] != dest5 || issue5["status"] != "open" ||
		num(issue5["last_status_code"]) != 503 || len(issue5["recent_attempt_ids"].([]any)) != 3 {
		t.Fatalf("5xx issue = %v", issue5)
	}
	id := issue5["id"].(string)
	if code, out := h.do("GET", "/v1/issues/summary", h.key, nil); code != 200 || num(out["open"]) != 2 {
		t.Errorf("summary = %d %v", code, out)
	}
	snooze := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	code, out := h.do("PATCH", "/v1/issues/"+id, h.key, map[string]any{"status": "acknowledged", "snoozed_until": snooze})
	if code != 200 || out["issue"].(map[string]any)["status"] != "acknowledged" || out["issue"].(map[string]any)["snoozed_until"] == nil {
		t.Errorf("PATCH issue = %d %v", code, out)
	}
	for _, bad := range []map[string]any{{"status": "closed"}, {"snoozed_until": "tomorrow"}, {"status": 3}} {
		if code, _ := h.do("PATCH", "/v1/issues/"+id, h.key, bad); code != 400 {
			t.Errorf("PATCH %v = %d", bad, code)
		}
	}
	// Retrying the issue retries each of its deliveries.
	down.up.Store(true)
	code, out = h.do("POST", "/v1/issues/"+id+"/retry", h.key, nil)
	if code != 200 || len(out["retried"].([]any)) != 3 {
		t.Fatalf("issue retry = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "the retried deliveries", func() bool { _, ok := down.counts(); return ok == 3 })

	// Quiet for 30 minutes: resolved (the clock is moved, not waited for).
	n, err := issues.ResolveStale(context.Background(), h.pool, eventstore.New(nil), time.Now().Add(29*time.Minute))
	if err != nil || n != 0 {
		t.Fatalf("resolved %d after 29 minutes (%v)", n, err)
	}
	if n, err = issues.ResolveStale(context.Background(), h.pool, eventstore.New(nil), time.Now().Add(31*time.Minute)); err != nil || n != 2 {
		t.Fatalf("resolved %d after 31 minutes (%v), want 2", n, err)
	}
	_, out = h.do("GET", "/v1/issues/"+id, h.key, nil)
	if is := out["issue"].(map[string]any); is["status"] != "resolved" || is["resolved_at"] == nil {
		t.Errorf("issue after auto-resolve = %v", is)
	}
	// A new failure opens a new issue.
	down.up.Store(false)
	h.ingest(src5, `{"again":1}`)
	waitFor(t, 10*time.Second, "a new open issue", func() bool {
		_, out := h.do("GET", "/v1/issues?destination_id="+dest5, h.key, nil)
		l := out["issues"].([]any)
		return len(l) == 1 && l[0].(map[string]any)["id"] != id
	})
	if code, out := h.do("GET", "/v1/issues?status=all", h.key, nil); code != 200 || num(out["pagination"].(map[string]any)["total"]) != 3 {
		t.Errorf("all issues = %d %v", code, out)
	}
	if code, _ := h.do("GET", "/v1/issues?status=bogus", h.key, nil); code != 400 {
		t.Errorf("bad status filter = %d", code)
	}
	if code, _ := h.do("GET", "/v1/issues/"+id, newKey(t, h.pool, ""), nil); code != 404 {
		t.Errorf("another tenant's issue = %d", code)
	}
	raw, _ := json.Marshal(out)
	_ = raw
}

// An issue retry retries at most IssueRetryBatch deliveries per request, the
// oldest first, and says so; the next request retries the rest.
func TestIssueRetryIsBoundedPerRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	down := newSwitchSink(t)
	src, _ := h.route(down.srv.URL, map[string]any{"retry_enabled": false, "circuit_breaker_enabled": false}, nil)
	total := redeliver.IssueRetryBatch + 5
	for i := 0; i < total; i++ {
		h.ingest(src, fmt.Sprintf(`{"i":%d}`, i))
	}
	var id string
	waitFor(t, 30*time.Second, "one issue with every failure", func() bool {
		_, out := h.do("GET", "/v1/issues", h.key, nil)
		list := out["issues"].([]any)
		if len(list) != 1 {
			return false
		}
		m := list[0].(map[string]any)
		id = m["id"].(string)
		return num(m["occurrence_count"]) == total
	})
	down.up.Store(true)
	code, out := h.do("POST", "/v1/issues/"+id+"/retry", h.key, nil)
	if code != 200 || len(out["retried"].([]any)) != redeliver.IssueRetryBatch || !strings.Contains(fmt.Sprint(out["message"]), "retry the issue again") {
		t.Fatalf("first issue retry = %d, %d retried, %v", code, len(out["retried"].([]any)), out["message"])
	}
	waitFor(t, 30*time.Second, "the first batch delivered", func() bool { _, ok := down.counts(); return ok == redeliver.IssueRetryBatch })
	code, out = h.do("POST", "/v1/issues/"+id+"/retry", h.key, nil)
	if code != 200 || len(out["retried"].([]any)) != 5 || strings.Contains(fmt.Sprint(out["message"]), "retry the issue again") {
		t.Fatalf("second issue retry = %d, %d retried, %v", code, len(out["retried"].([]any)), out["message"])
	}
	waitFor(t, 30*time.Second, "every delivery delivered once", func() bool { _, ok := down.counts(); return ok == total })
}

// A success after a failure resets the circuit's count: the batch finds
// the circuit not clean at its guard and is recorded on the locked path,
// which moves the circuit.
func TestSuccessAfterAFailureResetsTheCircuitCount(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t, 500)
	src, dest := h.route(dst.srv.URL, map[string]any{"circuit_breaker_threshold": 5, "retry_enabled": false}, nil)
	failed := h.ingest(src, `{"n":1}`)
	waitFor(t, 10*time.Second, "the failure counted", func() bool {
		return len(h.attempts("event_id="+failed+"&status=failed")) == 1 && num(h.circuit(dest)["failure_count"]) == 1
	})
	ok := h.ingest(src, `{"n":2}`)
	waitFor(t, 10*time.Second, "the success", func() bool { return len(h.attempts("event_id="+ok+"&status=success")) == 1 })
	if c := h.circuit(dest); c["state"] != "closed" || num(c["failure_count"]) != 0 {
		t.Errorf("circuit after a success = %v, want closed with no failures", c)
	}
}

// A hostile destination answers with a NUL byte, which the log's jsonb
// cannot hold: the attempt is recorded with U+FFFD in its place, once, and
// the webhook is not sent again and again.
func TestAResponseWithANULByteIsRecorded(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var hits atomic.Int64
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte("a\x00b"))
	}))
	t.Cleanup(dst.Close)
	src, _ := h.route(dst.URL+"/nul", nil, nil)
	ev := h.ingest(src, `{"n":1}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "the attempt recorded", func() bool {
		list = h.attempts("event_id=" + ev)
		return len(list) == 1 && list[0]["status"] == "success"
	})
	if got := list[0]["response_body"]; got != "a\ufffdb" {
		t.Errorf("response_body = %q", got)
	}
	waitFor(t, 10*time.Second, "the event delivered", func() bool { return h.eventStatus(ev) == "delivered" })
	if n := hits.Load(); n != 1 {
		t.Errorf("the destination was called %d times", n)
	}
}
