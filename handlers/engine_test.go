package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// testKeyring encrypts the tests' secrets (a fixed key: test data only).
var testKeyring = func() *secretbox.Keyring {
	kr, err := secretbox.ParseKeys("dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktMDAwMDA=")
	if err != nil {
		panic(err)
	}
	return kr
}()

// loopbackOnly admits the tests' httptest destinations on 127.0.0.0/8.
var loopbackOnly = outbound.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}

// harness is a running hookstream (API + engine) on a fresh database.
type harness struct {
	t          *testing.T
	pool       *pgxpool.Pool
	api        *httptest.Server
	key        string
	engineStop func()
	metrics    *metrics.Metrics
	svc        *handlers.Service
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	pool := pgtest.NewPool(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, MaxIngestBody: 64 << 10, Outbound: loopbackOnly, Secrets: testKeyring})
	t.Cleanup(svc.Close)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	metrics := handlers.NewMetrics(pool, quiet)
	loadSpec(t)
	api := httptest.NewServer(&specValidator{t: t, next: handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool, Log: quiet, Metrics: metrics, MetricsOnAPI: true})})
	t.Cleanup(api.Close)
	h := &harness{t: t, pool: pool, api: api, key: newKey(t, pool, ""), metrics: metrics, svc: svc}
	h.startEngine()
	t.Cleanup(func() {
		if h.engineStop != nil {
			h.stopEngine()
		}
	})
	return h
}

// startEngine runs a delivery engine against the harness's database.
func (h *harness) startEngine() {
	engine := handlers.NewEngine(handlers.EngineParams{Pool: h.pool, LeaseTTL: time.Second, Poll: 50 * time.Millisecond, ReplayPoll: 20 * time.Millisecond, ShutdownGrace: time.Second,
		Metrics: h.metrics, Log: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Outbound: loopbackOnly, Secrets: testKeyring, ConfigChanged: h.svc.ForgetRoutes})
	h.svc.HandOff(engine)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- engine.Run(ctx) }()
	h.engineStop = func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("engine: %v", err)
		}
	}
}

// stopEngine stops the engine and waits until it has returned.
func (h *harness) stopEngine() {
	h.engineStop()
	h.engineStop = nil
}

// newKey creates an API key in its own new organization (or the given one).
func newKey(t *testing.T, pool *pgxpool.Pool, org string) string {
	t.Helper()
	ctx := context.Background()
	p := tenancy.KeyParams{Name: "test"}
	if org == "" {
		o, e, err := tenancy.CreateTenant(ctx, pool, "org "+t.Name(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		p.OrgID, p.EnvID = o, e
	}
	k, err := tenancy.CreateAPIKey(ctx, pool, nil, p, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return k.Key
}

// do sends a request and decodes the JSON answer.
func (h *harness) do(method, path, key string, body any) (int, map[string]any) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, h.api.URL+path, rd)
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		h.t.Fatalf("%s %s: non-JSON answer %d %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func (h *harness) mustCreate(path string, body any) map[string]any {
	h.t.Helper()
	code, out := h.do("POST", path, h.key, body)
	if code != 201 {
		h.t.Fatalf("POST %s = %d %v", path, code, out)
	}
	for _, v := range out {
		return v.(map[string]any)
	}
	return nil
}

// route creates destination → source → connection and returns the source id and destination id.
func (h *harness) route(url string, dest map[string]any, filter []map[string]any) (string, string) {
	h.t.Helper()
	if dest == nil {
		dest = map[string]any{}
	}
	dest["name"], dest["url"] = "dest", url
	d := h.mustCreate("/v1/destinations", dest)
	s := h.mustCreate("/v1/sources", map[string]any{"name": "src"})
	conn := map[string]any{"name": "conn", "source_id": s["id"], "destination_id": d["id"]}
	if filter != nil {
		conn["filter_rules"] = filter
	}
	h.mustCreate("/v1/connections", conn)
	return s["id"].(string), d["id"].(string)
}

func (h *harness) ingest(source, body string) string {
	h.t.Helper()
	code, out := h.do("POST", "/v1/ingest/"+source, "", body)
	if code != 200 {
		h.t.Fatalf("ingest = %d %v", code, out)
	}
	return out["event_id"].(string)
}

func (h *harness) attempts(query string) []map[string]any {
	h.t.Helper()
	code, out := h.do("GET", "/v1/delivery-attempts?"+query, h.key, nil)
	if code != 200 {
		h.t.Fatalf("list attempts = %d %v", code, out)
	}
	var list []map[string]any
	for _, a := range out["delivery_attempts"].([]any) {
		list = append(list, a.(map[string]any))
	}
	return list
}

// eventStatus is the event's status in GET /v1/events/{id} ("" while not listed).
func (h *harness) eventStatus(id string) string {
	code, out := h.do("GET", "/v1/events/"+id, h.key, nil)
	if code != 200 {
		return ""
	}
	st, _ := out["event"].(map[string]any)["status"].(string)
	return st
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sink is a destination that answers from a script of status codes and
// records what it received.
type sink struct {
	mu      sync.Mutex
	srv     *httptest.Server
	codes   []int
	bodies  []string
	headers []http.Header
	times   []time.Time
}

func newSink(t *testing.T, codes ...int) *sink {
	s := &sink{codes: codes}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		n := len(s.bodies)
		s.bodies = append(s.bodies, string(body))
		s.headers = append(s.headers, r.Header.Clone())
		s.times = append(s.times, time.Now())
		code := 200
		if n < len(s.codes) {
			code = s.codes[n]
		}
		s.mu.Unlock()
		w.WriteHeader(code)
		fmt.Fprintf(w, "reply %d", n+1)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.bodies) }

// byEvent counts the requests received per X-hookstream-Event-Id.
func (s *sink) byEvent() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := map[string]int{}
	for _, hd := range s.headers {
		got[hd.Get("X-hookstream-Event-Id")]++
	}
	return got
}

func num(v any) int { f, _ := v.(float64); return int(f) }

func byNumber(list []map[string]any, n int) map[string]any {
	for _, a := range list {
		if num(a["attempt_number"]) == n {
			return a
		}
	}
	return nil
}

func TestDeliverySucceedsFirstTry(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL+"/hook", nil, nil)
	ev := h.ingest(src, `{"type":"order.created","id":42}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "a successful attempt", func() bool {
		list = h.attempts("event_id=" + ev)
		return len(list) == 1 && list[0]["status"] == "success"
	})
	a := list[0]
	if len(a) != 25 {
		t.Errorf("delivery_attempt has %d fields, want the seed's 24 and delivery_id: %v", len(a), a)
	}
	if num(a["attempt_number"]) != 1 || a["trigger_type"] != "initial" || num(a["response_status"]) != 200 || num(a["is_dlq"]) != 0 ||
		a["destination_name"] != "dest" || a["connection_name"] != "conn" || a["response_body"] != "reply 1" {
		t.Errorf("attempt = %v", a)
	}
	if _, ok := a["request_headers"].(string); !ok {
		t.Errorf("request_headers must be a JSON-encoded string, got %T", a["request_headers"])
	}
	if dst.count() != 1 || dst.bodies[0] != `{"type":"order.created","id":42}` {
		t.Fatalf("destination received %v", dst.bodies)
	}
	hd := dst.headers[0]
	if hd.Get("X-hookstream-Event-Id") != ev || hd.Get("X-hookstream-Delivery-Attempt") != "1" || hd.Get("X-hookstream-Timestamp") == "" || hd.Get("Idempotency-Key") == "" {
		t.Errorf("delivery headers = %v", hd)
	}
	if a["delivery_id"] != hd.Get("X-Hookstream-Delivery-Id") || a["delivery_id"] == "" {
		t.Errorf("attempt's delivery_id %v, the request's X-Hookstream-Delivery-Id %q", a["delivery_id"], hd.Get("X-Hookstream-Delivery-Id"))
	}
	code, out := h.do("GET", "/v1/delivery-attempts/"+a["id"].(string), h.key, nil)
	if code != 200 || out["delivery_attempt"].(map[string]any)["id"] != a["id"] {
		t.Errorf("get attempt = %d %v", code, out)
	}
	waitFor(t, 5*time.Second, "the event, delivered, in the events list", func() bool {
		code, out := h.do("GET", "/v1/events/"+ev, h.key, nil)
		return code == 200 && out["event"].(map[string]any)["source_id"] == src && h.eventStatus(ev) == "delivered"
	})
}

func TestFailureThenSuccessRetries(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t, 503)
	src, _ := h.route(dst.srv.URL, map[string]any{"retry_intervals": []int{1}}, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 15*time.Second, "the retry to succeed", func() bool {
		list = h.attempts("event_id=" + ev)
		return len(list) == 2 && byNumber(list, 2) != nil && byNumber(list, 2)["status"] == "success"
	})
	first, second := byNumber(list, 1), byNumber(list, 2)
	if first["status"] != "failed" || num(first["response_status"]) != 503 || first["next_retry_at"] == nil || first["error"] == nil {
		t.Errorf("first attempt = %v", first)
	}
	if second["trigger_type"] != "retry" {
		t.Errorf("second attempt = %v", second)
	}
	if dst.headers[0].Get("Idempotency-Key") != dst.headers[1].Get("Idempotency-Key") {
		t.Error("idempotency id changed between attempts")
	}
	if dst.headers[1].Get("X-hookstream-Delivery-Attempt") != "2" {
		t.Errorf("attempt header = %q", dst.headers[1].Get("X-hookstream-Delivery-Attempt"))
	}
}

func TestExhaustionMovesToDLQAndManualRetryDelivers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t, 500, 500, 500)
	src, _ := h.route(dst.srv.URL, map[string]any{"retry_intervals": []int{0}, "retry_max_attempts": 2, "retry_backoff_type": "fixed"}, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 15*time.Second, "the delivery to reach the DLQ", func() bool {
		list = h.attempts("event_id=" + ev + "&is_dlq=1")
		return len(list) == 1
	})
	last := list[0]
	waitFor(t, 5*time.Second, "the event to show failed", func() bool { return h.eventStatus(ev) == "failed" })
	if code, out := h.do("GET", "/v1/events?status=failed", h.key, nil); code != 200 || len(out["events"].([]any)) != 1 {
		t.Errorf("failed events list = %d %v", code, out)
	}
	// Query flags read as the responses show them (0/1) or as booleans; a
	// bad value, a bad enum or an unknown parameter is a 400 naming it.
	for _, q := range []string{"is_dlq=true", "is_dlq=TRUE", "is_dlq=1"} {
		if got := h.attempts("event_id=" + ev + "&" + q); len(got) != 1 || got[0]["id"] != last["id"] {
			t.Errorf("delivery-attempts?%s = %v, want the DLQ attempt", q, got)
		}
	}
	if got := h.attempts("event_id=" + ev + "&is_dlq=false"); len(got) != 2 {
		t.Errorf("delivery-attempts?is_dlq=false = %d attempts, want the 2 not in the DLQ", len(got))
	}
	for q, names := range map[string]string{
		"/v1/delivery-attempts?is_dlq=yes":       "'is_dlq'",
		"/v1/delivery-attempts?statuss=failed":   "'statuss'",
		"/v1/delivery-attempts?status=bogus":     "'status'",
		"/v1/events?status=bogus":                "'status'",
		"/v1/events?dedup_status=maybe":          "'dedup_status'",
		"/v1/events?source=" + src:               "'source'",
		"/v1/events?verification_status=unknown": "'verification_status'",
	} {
		code, out := h.do("GET", q, h.key, nil)
		if msg, _ := out["error"].(string); code != 400 || !strings.Contains(msg, names) {
			t.Errorf("GET %s = %d %v, want 400 naming %s", q, code, out, names)
		}
	}
	if num(last["attempt_number"]) != 3 || last["dlq_at"] == nil || last["next_retry_at"] != nil || last["status"] != "failed" {
		t.Errorf("DLQ attempt = %v", last)
	}
	all := h.attempts("event_id=" + ev)
	if len(all) != 3 || byNumber(all, 1)["next_retry_at"] == nil || num(byNumber(all, 1)["is_dlq"]) != 0 {
		t.Fatalf("attempts = %v", all)
	}
	// Manual retry of the DLQ'd attempt: a new attempt, the original untouched.
	code, out := h.do("POST", "/v1/delivery-attempts/"+last["id"].(string)+"/retry", h.key, nil)
	if code != 200 {
		t.Fatalf("retry = %d %v", code, out)
	}
	na := out["delivery_attempt"].(map[string]any)
	if na["trigger_type"] != "manual" || num(na["attempt_number"]) != 4 || na["status"] != "success" || na["id"] == last["id"] {
		t.Errorf("manual attempt = %v", na)
	}
	code, out = h.do("GET", "/v1/delivery-attempts/"+last["id"].(string), h.key, nil)
	if code != 200 || num(out["delivery_attempt"].(map[string]any)["is_dlq"]) != 1 {
		t.Errorf("original after retry = %v", out)
	}
	if dst.count() != 4 {
		t.Errorf("destination saw %d requests, want 4", dst.count())
	}
	waitFor(t, 5*time.Second, "the event to show delivered after the manual retry", func() bool { return h.eventStatus(ev) == "delivered" })
}

func TestFailedManualRetryReturnsToDLQ(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t, 500, 500)
	src, _ := h.route(dst.srv.URL, map[string]any{"retry_enabled": false}, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "DLQ", func() bool { list = h.attempts("event_id=" + ev + "&is_dlq=1"); return len(list) == 1 })
	code, out := h.do("POST", "/v1/delivery-attempts/"+list[0]["id"].(string)+"/retry", h.key, nil)
	if code != 200 {
		t.Fatalf("retry = %d %v", code, out)
	}
	na := out["delivery_attempt"].(map[string]any)
	if na["status"] != "failed" || num(na["is_dlq"]) != 1 || na["dlq_at"] == nil || num(na["response_status"]) != 500 {
		t.Errorf("failed manual retry = %v", na)
	}
}

func TestConcurrentRetriesOneAccepted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var hits atomic.Int32
	release := make(chan struct{})
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 1 {
			<-release // hold the accepted retry in flight until both calls have answered
		}
		w.WriteHeader(500)
	}))
	defer failing.Close()
	src, _ := h.route(failing.URL, map[string]any{"retry_enabled": false}, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "DLQ", func() bool { list = h.attempts("event_id=" + ev + "&is_dlq=1"); return len(list) == 1 })
	id := list[0]["id"].(string)
	codes := make(chan int, 2)
	start := make(chan struct{})
	for i := 0; i < 2; i++ {
		go func() {
			<-start
			code, _ := h.do("POST", "/v1/delivery-attempts/"+id+"/retry?wait=false", h.key, nil)
			codes <- code
		}()
	}
	close(start)
	got := []int{<-codes, <-codes}
	close(release)
	if !((got[0] == 200 && got[1] == 400) || (got[0] == 400 && got[1] == 200)) {
		t.Fatalf("concurrent retries answered %v, want one 200 and one 400", got)
	}
	// Wait until the accepted retry is recorded (failed, back in the DLQ);
	// by then a second dispatch would have reached the destination too.
	waitFor(t, 10*time.Second, "the manual attempt to be recorded", func() bool {
		l := h.attempts("event_id=" + ev + "&is_dlq=1")
		return len(l) == 2
	})
	if all := h.attempts("event_id=" + ev); len(all) != 2 {
		t.Fatalf("%d attempts, want 2 (initial + one manual)", len(all))
	}
	if n := hits.Load(); n != 2 {
		t.Fatalf("destination saw %d requests, want 2 (initial + one retry)", n)
	}
}

func TestDestinationRenameFollowsIntoAttempts(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, did := h.route(dst.srv.URL, nil, nil)
	ev := h.ingest(src, `{}`)
	waitFor(t, 10*time.Second, "delivery", func() bool { l := h.attempts("event_id=" + ev); return len(l) == 1 && l[0]["status"] == "success" })
	if code, out := h.do("PATCH", "/v1/destinations/"+did, h.key, map[string]any{"name": "renamed"}); code != 200 {
		t.Fatalf("rename = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "the new name on the old attempt", func() bool {
		return h.attempts("event_id=" + ev)[0]["destination_name"] == "renamed"
	})
}

func TestTenantIsolationAndAuth(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, did := h.route(dst.srv.URL, nil, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "delivery", func() bool { list = h.attempts("event_id=" + ev); return len(list) == 1 })
	other := newKey(t, h.pool, "")
	id := list[0]["id"].(string)
	for _, path := range []string{"/v1/delivery-attempts/" + id, "/v1/destinations/" + did, "/v1/sources/" + src, "/v1/events/" + ev} {
		if code, out := h.do("GET", path, other, nil); code != 404 {
			t.Errorf("other tenant GET %s = %d %v, want 404", path, code, out)
		}
	}
	if code, out := h.do("POST", "/v1/delivery-attempts/"+id+"/retry", other, nil); code != 404 || out["error"] != "Delivery attempt not found" {
		t.Errorf("other tenant retry = %d %v", code, out)
	}
	if code, _ := h.do("POST", "/v1/delivery-attempts/not-an-id/retry", h.key, nil); code != 404 {
		t.Errorf("malformed id retry = %d, want 404", code)
	}
	if l := len(h.attempts("")); l != 1 {
		t.Errorf("own list has %d attempts", l)
	}
	code, out := h.do("GET", "/v1/delivery-attempts", "hs_live_"+strings.Repeat("0", 64), nil)
	if code != 401 || out["error"] != "Unauthorized" || out["status"] != float64(401) || !strings.HasPrefix(out["request_id"].(string), "req_") {
		t.Errorf("bad key = %d %v", code, out)
	}
	req, _ := http.NewRequest("GET", h.api.URL+"/v1/delivery-attempts", nil)
	req.Header.Set("Authorization", "Bearer "+h.key)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("bearer auth failed: %v %v", resp, err)
	}
}

func TestBadInputIsRejectedAndNothingStored(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	cases := []struct {
		name, body string
		want       int
		mention    string
	}{
		{"malformed", `{"name":`, 400, "malformed"},
		{"wrong type", `{"name":"d","url":"http://x.example","timeout_ms":"slow"}`, 400, "timeout_ms"},
		{"unknown field", `{"name":"d","url":"http://x.example","colour":"red"}`, 400, "colour"},
		{"missing url", `{"name":"d"}`, 400, "url"},
		{"bad retry", `{"name":"d","url":"http://x.example","retry_max_attempts":11}`, 400, "retry_max_attempts"},
		{"huge", `{"name":"` + strings.Repeat("x", 2<<20) + `"}`, 413, "too large"},
	}
	for _, c := range cases {
		code, out := h.do("POST", "/v1/destinations", h.key, c.body)
		msg, _ := out["error"].(string)
		if code != c.want || !strings.Contains(strings.ToLower(msg), c.mention) {
			t.Errorf("%s: %d %v, want %d mentioning %q", c.name, code, out, c.want, c.mention)
		}
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM destinations`).Scan(&n); err != nil || n != 0 {
		t.Errorf("destinations stored after bad input: %d (%v)", n, err)
	}
	code, _ := h.do("POST", "/v1/ingest/"+strings.Repeat("a", 32), "", `{}`)
	if code != 404 {
		t.Errorf("ingest to unknown source = %d", code)
	}
	src := h.mustCreate("/v1/sources", map[string]any{"name": "s"})
	code, _ = h.do("POST", "/v1/ingest/"+src["id"].(string), "", strings.Repeat("y", 65<<10))
	if code != 413 {
		t.Errorf("oversized ingest = %d, want 413", code)
	}
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE event_type = 'EventReceived'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("events stored after rejected ingests: %d", n)
	}
}

func TestFilterExcludesEvent(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, []map[string]any{{"field": "payload.type", "op": "eq", "value": "keep"}})
	dropped := h.ingest(src, `{"type":"drop"}`)
	kept := h.ingest(src, `{"type":"keep"}`)
	waitFor(t, 10*time.Second, "the kept event delivered", func() bool { l := h.attempts("event_id=" + kept); return len(l) == 1 && l[0]["status"] == "success" })
	if l := h.attempts("event_id=" + dropped); len(l) != 0 {
		t.Fatalf("filtered event has attempts: %v", l)
	}
	waitFor(t, 5*time.Second, "the filtered event in the events list", func() bool { return h.eventStatus(dropped) == "received" })
	// The event says which connection skipped it, and why.
	code, out := h.do("GET", "/v1/events/"+dropped, h.key, nil)
	skipped, _ := out["event"].(map[string]any)["skipped_connections"].([]any)
	if code != 200 || len(skipped) != 1 || skipped[0].(map[string]any)["reason"] != "filtered" || skipped[0].(map[string]any)["connection_id"] == "" {
		t.Errorf("filtered event = %d, skipped_connections %v, want the connection with reason filtered", code, skipped)
	}
	if _, out := h.do("GET", "/v1/events/"+kept, h.key, nil); len(out["event"].(map[string]any)["skipped_connections"].([]any)) != 0 {
		t.Errorf("delivered event lists skipped connections: %v", out["event"])
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE event_type = 'DeliveryRequested'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("DeliveryRequested events = %d, want 1", n)
	}
	if dst.count() != 1 {
		t.Fatalf("destination saw %d requests", dst.count())
	}
}

func TestHangingDestinationDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	hang := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer hung.Close()
	defer close(hang)
	fast := newSink(t)
	slowSrc, _ := h.route(hung.URL, map[string]any{"timeout_ms": 60000}, nil)
	fastSrc, _ := h.route(fast.srv.URL, nil, nil)
	for i := 0; i < 80; i++ { // more than the per-destination bound
		h.ingest(slowSrc, `{}`)
	}
	for i := 0; i < 20; i++ {
		h.ingest(fastSrc, `{}`)
	}
	waitFor(t, 10*time.Second, "the healthy destination's deliveries", func() bool { return fast.count() == 20 })
}

func TestOutboundGuardRefusesPrivateAddresses(t *testing.T) {
	t.Parallel()
	for _, a := range []string{"127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.1.1", "::1", "fe80::1"} {
		if err := (outbound.Policy{}).Check(netip.MustParseAddr(a)); err == nil {
			t.Errorf("%s allowed by default", a)
		}
	}
	if err := (outbound.Policy{}).Check(netip.MustParseAddr("93.184.216.34")); err != nil {
		t.Errorf("public address refused: %v", err)
	}
	h := newHarnessStrict(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, map[string]any{"retry_enabled": false}, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "the refused attempt", func() bool {
		list = h.attempts("event_id=" + ev)
		return len(list) == 1 && list[0]["status"] == "failed"
	})
	// The refusal never names the resolved address (it would map internal DNS for a tenant).
	if msg, _ := list[0]["error"].(string); !strings.HasSuffix(msg, outbound.ErrAddressNotAllowed.Error()) || strings.Contains(msg, "127.0.0.1") || dst.count() != 0 {
		t.Fatalf("attempt = %v, destination saw %d", list[0], dst.count())
	}
}

// newHarnessStrict runs the engine with the default outbound policy (no loopback).
func newHarnessStrict(t *testing.T) *harness {
	pool := pgtest.NewPool(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, Outbound: loopbackOnly, Secrets: testKeyring})
	t.Cleanup(svc.Close)
	api := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool}))
	t.Cleanup(api.Close)
	engine := handlers.NewEngine(handlers.EngineParams{Pool: pool, Poll: 50 * time.Millisecond, Secrets: testKeyring})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- engine.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &harness{t: t, pool: pool, api: api, key: newKey(t, pool, "")}
}

func newKeyB(b *testing.B, pool *pgxpool.Pool) string {
	o, e, err := tenancy.CreateTenant(context.Background(), pool, "bench", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	k, err := tenancy.CreateAPIKey(context.Background(), pool, nil, tenancy.KeyParams{Name: "bench", OrgID: o, EnvID: e}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	return k.Key
}

func decodeBody(resp *http.Response, v any) {
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(v)
}

// A retry due at once (fixed interval 0, breaker off) goes out from the
// lane that recorded the failure: its job keeps the worker's lease from
// the failure's recording on, so no other claim can take it, and each
// chained attempt is recorded like any other.
func TestRetryDueAtOnceKeepsItsLeaseAndRunsAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	type seen struct {
		key, attempt, state, leasedBy string
		number                        int
	}
	var mu sync.Mutex
	var got []seen
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seen{key: r.Header.Get("Idempotency-Key"), attempt: r.Header.Get("X-Hookstream-Delivery-Attempt")}
		var leased *string
		// The job row while its attempt is in flight.
		if err := h.pool.QueryRow(r.Context(), `SELECT state, leased_by, attempt_number FROM delivery_jobs WHERE delivery_id = $1`,
			r.Header.Get("X-Hookstream-Delivery-Id")).Scan(&s.state, &leased, &s.number); err != nil {
			t.Errorf("job row: %v", err)
		}
		if leased != nil {
			s.leasedBy = *leased
		}
		mu.Lock()
		got = append(got, s)
		n := len(got)
		mu.Unlock()
		if n <= 2 {
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(dst.Close)
	// A retry claimed again (not chained) shows as a hand-back between the attempts.
	logLeaseHandbacks(t, h)
	src, _ := h.route(dst.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "retry_max_attempts": 5,
		"circuit_breaker_enabled": false}, nil)
	ev := h.ingest(src, `{"chain":true}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "three attempts, the last a success", func() bool {
		list = h.attempts("event_id=" + ev)
		return len(list) == 3 && byNumber(list, 3) != nil && byNumber(list, 3)["status"] == "success"
	})
	for n, want := range map[int]string{1: "failed", 2: "failed", 3: "success"} {
		if a := byNumber(list, n); a == nil || a["status"] != want || (n > 1 && a["trigger_type"] != "retry") {
			t.Errorf("attempt %d = %v, want %s", n, a, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("destination saw %d requests, want 3", len(got))
	}
	for i, s := range got {
		if s.key != got[0].key || s.key == "" {
			t.Errorf("request %d Idempotency-Key %q, first %q", i+1, s.key, got[0].key)
		}
		if s.attempt != strconv.Itoa(i+1) || s.number != i+1 {
			t.Errorf("request %d: attempt header %q, job row's attempt %d", i+1, s.attempt, s.number)
		}
		if s.state != "scheduled" || s.leasedBy == "" || s.leasedBy != got[0].leasedBy {
			t.Errorf("request %d: job row %s, leased by %q (first by %q): a chained attempt holds the same worker's lease", i+1, s.state, s.leasedBy, got[0].leasedBy)
		}
	}
	var state string
	var leased *string
	if err := h.pool.QueryRow(context.Background(), `SELECT j.state, j.leased_by FROM delivery_jobs j WHERE j.event_id = $1`, ev).Scan(&state, &leased); err != nil {
		t.Fatal(err)
	}
	if state != "done" || leased != nil {
		t.Errorf("finished job: state %s, leased by %v", state, leased)
	}
	if handbacks := leaseHandbacks(t, h, ""); handbacks != 0 {
		t.Errorf("the job's lease was handed back %d times between its attempts: the retries were claimed again, not chained", handbacks)
	}
}

// logLeaseHandbacks logs every hand-back of a scheduled job's lease into the
// table lease_handbacks (leaseHandbacks counts them): the lease given up
// while the job stays at the same version, not a record that moved the
// job on without keeping its lease.
func logLeaseHandbacks(t *testing.T, h *harness) {
	t.Helper()
	if _, err := h.pool.Exec(context.Background(), `CREATE TABLE lease_handbacks (delivery_id text, attempt_number int);
		CREATE FUNCTION log_lease_handback() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO lease_handbacks VALUES (NEW.delivery_id, NEW.attempt_number); RETURN NEW; END $$;
		CREATE TRIGGER lease_handback AFTER UPDATE ON delivery_jobs FOR EACH ROW
			WHEN (OLD.leased_by IS NOT NULL AND NEW.leased_by IS NULL AND NEW.state = 'scheduled' AND OLD.version = NEW.version)
			EXECUTE FUNCTION log_lease_handback()`); err != nil {
		t.Fatal(err)
	}
}

// leaseHandbacks counts the logged hand-backs of one event's jobs (all with event "").
func leaseHandbacks(t *testing.T, h *harness, event string) int {
	t.Helper()
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM lease_handbacks b
		WHERE $1 = '' OR b.delivery_id IN (SELECT delivery_id FROM delivery_jobs WHERE event_id = $1)`, event).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A small batch's failure records in a group and gives its destination's
// room back meanwhile; its retry, due at once, takes the room again after
// the record. When another webhook took the room in between (here the only
// lane the destination may hold), the retry waits for it briefly, then
// gives its lease back and is claimed once the room frees: each webhook
// delivered, the failed one on its second attempt with the same
// Idempotency-Key. Whether the other webhook's claim beats the record is a
// race (the record waits up to 100 ms for company, the claim a few ms), so
// a round where the retry went out first is tried again, up to three.
func TestChainedRetryWithoutRoomIsClaimedOnceTheRoomFrees(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.stopEngine()
	engine := handlers.NewEngine(handlers.EngineParams{Pool: h.pool, Lanes: 16, PerDestination: 16, LeaseTTL: 5 * time.Second,
		Poll: 50 * time.Millisecond, ShutdownGrace: time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Outbound: loopbackOnly, Secrets: testKeyring})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- engine.Run(ctx) }()
	logLeaseHandbacks(t, h)

	type round struct {
		failedArrived, otherIngested, otherArrived, release chan struct{}
		mu                                                  sync.Mutex
		keys                                                []string // the failing webhook's requests
		other                                               int
	}
	var cur atomic.Pointer[round]
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rd := cur.Load()
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "other") {
			rd.mu.Lock()
			rd.other++
			rd.mu.Unlock()
			rd.otherArrived <- struct{}{}
			select { // holds the destination's only lane until released
			case <-rd.release:
			case <-r.Context().Done():
			}
			return
		}
		rd.mu.Lock()
		rd.keys = append(rd.keys, r.Header.Get("Idempotency-Key"))
		n := len(rd.keys)
		rd.mu.Unlock()
		if n == 1 {
			rd.failedArrived <- struct{}{}
			<-rd.otherIngested // the other webhook waits for this one's room
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(dst.Close)
	t.Cleanup(func() { cancel(); <-done })
	src, _ := h.route(dst.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "retry_max_attempts": 3,
		"circuit_breaker_enabled": false}, nil)

	for try := 1; ; try++ {
		rd := &round{failedArrived: make(chan struct{}, 1), otherIngested: make(chan struct{}),
			otherArrived: make(chan struct{}, 4), release: make(chan struct{})}
		cur.Store(rd)
		failing := h.ingest(src, fmt.Sprintf(`{"kind":"fails first","try":%d}`, try))
		waitSignal(t, rd.failedArrived, "the failing webhook's first attempt")
		other := h.ingest(src, fmt.Sprintf(`{"kind":"other","try":%d}`, try))
		close(rd.otherIngested)
		waitSignal(t, rd.otherArrived, "the other webhook, once the failed attempt gave the room back")
		// Now the other webhook holds the room: the retry either waits and
		// is handed back, or went out before the other was claimed.
		var handedBack bool
		waitFor(t, 10*time.Second, "the retry handed back or sent", func() bool {
			handedBack = leaseHandbacks(t, h, failing) > 0
			rd.mu.Lock()
			defer rd.mu.Unlock()
			return handedBack || len(rd.keys) >= 2
		})
		close(rd.release)
		waitFor(t, 10*time.Second, "both webhooks delivered", func() bool {
			a, b := h.attempts("event_id="+failing), h.attempts("event_id="+other)
			return len(a) == 2 && byNumber(a, 2) != nil && byNumber(a, 2)["status"] == "success" &&
				len(b) == 1 && b[0]["status"] == "success"
		})
		rd.mu.Lock()
		keys, others := rd.keys, rd.other
		rd.mu.Unlock()
		if len(keys) != 2 || keys[0] != keys[1] || keys[0] == "" || others != 1 {
			t.Fatalf("round %d: the failing webhook's requests carried keys %q (want two, the same), the other arrived %d times", try, keys, others)
		}
		if handedBack {
			t.Logf("round %d: the retry waited for the room, gave its lease back and was claimed once it freed", try)
			return
		}
		if try == 3 {
			t.Fatal("in three rounds the retry always went out before the other webhook took the room: the hand-back was never exercised")
		}
	}
}

// waitSignal waits for one value on c.
func waitSignal(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// A destination edited while an attempt is in flight is read again for its
// retry, even one due at once: the retry goes out with the new settings.
func TestRetryDueAtOnceFollowsAnEditedDestination(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var dest string
	var requests atomic.Int32
	var secondHeader atomic.Value
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch requests.Add(1) {
		case 1:
			if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"headers": map[string]string{"X-Edited": "yes"}}); code != 200 {
				t.Errorf("edit = %d %v", code, out)
			}
			w.WriteHeader(500)
		case 2:
			secondHeader.Store(r.Header.Get("X-Edited"))
		}
	}))
	t.Cleanup(dst.Close)
	_, dest = h.route(dst.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "retry_max_attempts": 5,
		"circuit_breaker_enabled": false}, nil)
	src := h.mustCreate("/v1/sources", map[string]any{"name": "edited"})
	h.mustCreate("/v1/connections", map[string]any{"name": "edited", "source_id": src["id"], "destination_id": dest})
	ev := h.ingest(src["id"].(string), `{}`)
	waitFor(t, 10*time.Second, "the retry", func() bool {
		a := byNumber(h.attempts("event_id="+ev), 2)
		return a != nil && a["status"] == "success"
	})
	if got, _ := secondHeader.Load().(string); got != "yes" {
		t.Errorf("the retry went out with X-Edited %q: it reused the settings claimed before the edit", got)
	}
}

// A pause made while an attempt is in flight holds its retry, even one due
// at once: the job hands its lease back instead of chaining, and the retry
// goes out on resume.
func TestPauseHoldsARetryDueAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var conn string
	var requests atomic.Int32
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			if code, out := h.do("PATCH", "/v1/connections/"+conn, h.key, map[string]any{"status": "paused"}); code != 200 {
				t.Errorf("pause = %d %v", code, out)
			}
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(dst.Close)
	src, _ := h.route(dst.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "retry_max_attempts": 5,
		"circuit_breaker_enabled": false}, nil)
	_, out := h.do("GET", "/v1/connections?source_id="+src, h.key, nil)
	conn = out["connections"].([]any)[0].(map[string]any)["id"].(string)
	ev := h.ingest(src, `{}`)
	waitFor(t, 10*time.Second, "the failure recorded and its job handed back", func() bool {
		var state string
		var leased *string
		var number int
		err := h.pool.QueryRow(context.Background(), `SELECT state, leased_by, attempt_number FROM delivery_jobs WHERE event_id = $1`, ev).
			Scan(&state, &leased, &number)
		return err == nil && state == "scheduled" && number == 2 && leased == nil
	})
	if n := requests.Load(); n != 1 {
		t.Fatalf("%d requests while paused, want 1", n)
	}
	if code, _ := h.do("PATCH", "/v1/connections/"+conn, h.key, map[string]any{"status": "active"}); code != 200 {
		t.Fatal("resume failed")
	}
	waitFor(t, 10*time.Second, "the retry after resume", func() bool {
		a := byNumber(h.attempts("event_id="+ev), 2)
		return a != nil && a["status"] == "success"
	})
}

// Attempts carry their delivery's id and filter on it: one event through
// two connections lists each delivery's attempts apart; an unknown id, or
// another tenant's, lists none.
func TestAttemptsCarryAndFilterOnTheirDelivery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	one, two := newSink(t, 500), newSink(t)
	src, _ := h.route(one.srv.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "circuit_breaker_enabled": false}, nil)
	d2 := h.mustCreate("/v1/destinations", map[string]any{"name": "second", "url": two.srv.URL})
	h.mustCreate("/v1/connections", map[string]any{"name": "second", "source_id": src, "destination_id": d2["id"]})
	ev := h.ingest(src, `{}`)
	var all []map[string]any
	waitFor(t, 10*time.Second, "three attempts: a failure and its retry, and the other delivery", func() bool {
		all = h.attempts("event_id=" + ev + "&status=success")
		return len(all) == 2 && len(h.attempts("event_id="+ev)) == 3
	})
	byDelivery := map[string]int{}
	for _, a := range h.attempts("event_id=" + ev) {
		byDelivery[a["delivery_id"].(string)]++
	}
	if len(byDelivery) != 2 {
		t.Fatalf("attempts by delivery = %v, want two deliveries", byDelivery)
	}
	for d, n := range byDelivery {
		got := h.attempts("delivery_id=" + d)
		if len(got) != n {
			t.Errorf("delivery_id=%s lists %d attempts, want %d", d, len(got), n)
		}
		for _, a := range got {
			if a["delivery_id"] != d {
				t.Errorf("delivery_id=%s listed %v", d, a)
			}
		}
		other := newKey(t, h.pool, "")
		code, out := h.do("GET", "/v1/delivery-attempts?delivery_id="+d, other, nil)
		if code != 200 || len(out["delivery_attempts"].([]any)) != 0 {
			t.Errorf("another tenant's delivery_id=%s = %d %v", d, code, out)
		}
	}
	if got := h.attempts("delivery_id=01a2338465b27c299cf70edd8b40c91b"); len(got) != 0 {
		t.Errorf("an unknown delivery lists %v", got)
	}
}
