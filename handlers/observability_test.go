package handlers_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers"
)

// scrape returns /metrics as series -> value.
func (h *harness) scrape() map[string]float64 {
	h.t.Helper()
	resp, err := http.Get(h.api.URL + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		h.t.Fatalf("/metrics = %d", resp.StatusCode)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func TestMetricsAfterAKnownWorkload(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ok := newSink(t)
	src, dest := h.route(ok.srv.URL, nil, nil)
	bad := newSink(t, 500)
	badSrc, badDest := h.route(bad.srv.URL, map[string]any{"retry_enabled": false}, nil)
	before := h.scrape()
	for i := 0; i < 3; i++ {
		h.ingest(src, `{"n":1}`)
	}
	h.ingest(badSrc, `{"n":22}`)
	if code, _ := h.post("/v1/ingest/0123456789abcdef0123456789abcdef", `{}`, nil); code != 404 {
		t.Fatalf("unknown source = %d", code)
	}
	h.quiet(10 * time.Second)
	after := h.scrape()
	delta := func(series string) float64 { return after[series] - before[series] }
	for series, want := range map[string]float64{
		`hookstream_delivery_attempts_total{destination_id="` + dest + `",outcome="success"}`:                     3,
		`hookstream_delivery_attempts_total{destination_id="` + badDest + `",outcome="failed"}`:                   1,
		`hookstream_delivery_attempt_duration_seconds_count{outcome="success"}`:                                   3,
		`hookstream_ingest_requests_total{code="200"}`:                                                            4,
		`hookstream_ingest_requests_total{code="404"}`:                                                            1,
		`hookstream_ingest_bytes_total`:                                                                           3*7 + 8,
		`hookstream_http_request_duration_seconds_count{code="200",method="POST",route="/v1/ingest/{source_id}"}`: 4,
	} {
		if got := delta(series); got != want {
			t.Errorf("%s: +%v, want +%v", series, got, want)
		}
	}
	for _, series := range []string{`hookstream_delivery_jobs{state="due"}`, `hookstream_oldest_due_job_age_seconds`,
		`hookstream_consumer_lag_events{group="projector.delivery_attempts"}`, `hookstream_consumer_lag_seconds{group="scheduler"}`,
		`hookstream_circuit_state{destination_id="` + dest + `"}`, `hookstream_db_pool_max_connections`,
		// The runtime's own: heap in use and the live heap after the last
		// GC (the soak tells a leak from garbage with the second).
		`go_memstats_heap_inuse_bytes`, `go_gc_heap_live_bytes`, `process_resident_memory_bytes`,
		// The Ps serve runs with right now (it follows the load beside a
		// local PostgreSQL: README, Configuration).
		`go_sched_gomaxprocs_threads`} {
		if _, ok := after[series]; !ok {
			t.Errorf("/metrics has no %s", series)
		}
	}
	// No unbounded labels: no event, delivery or attempt id appears.
	resp, _ := http.Get(h.api.URL + "/metrics")
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, a := range h.attempts("") {
		for _, id := range []string{a["id"].(string), a["event_id"].(string)} {
			if strings.Contains(string(raw), id) {
				t.Fatalf("/metrics holds the id %s", id)
			}
		}
	}
	if regexp.MustCompile(`route="/v1/ingest/[0-9a-f]{32}"`).Match(raw) {
		t.Error("a route label holds a raw path")
	}
}

func TestReadyNamesWhatIsNotReady(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	api := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Pool: h.pool, ReadyMaxLag: 200 * time.Millisecond,
		Service: handlers.NewService(handlers.ServiceParams{Pool: h.pool, Outbound: loopbackOnly, Secrets: testKeyring})}))
	t.Cleanup(api.Close)
	ready := func() (int, string) {
		resp, err := http.Get(api.URL + "/v1/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	if code, body := ready(); code != 200 || !strings.Contains(body, `"status":"ready"`) {
		t.Fatalf("ready = %d %s", code, body)
	}
	// A consumer stuck on an event it cannot decode falls behind.
	store := eventstore.New(nil)
	if _, err := store.Append(context.Background(), h.pool, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: uuid.NewString(),
		Expected: eventstore.NoStream, Events: []eventstore.NewEvent{{Type: domain.EvMovedToDLQ, Payload: map[string]any{"event_id": 42}}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "ready to report the lag", func() bool {
		code, body := ready()
		return code == 503 && strings.Contains(body, "behind")
	})
	if _, err := h.pool.Exec(context.Background(), `DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)`); err != nil {
		t.Fatal(err)
	}
	if code, body := ready(); code != 503 || !strings.Contains(body, "1 pending") {
		t.Errorf("ready with a pending migration = %d %s", code, body)
	}
	// Liveness stays up.
	if resp, err := http.Get(api.URL + "/v1/health"); err != nil || resp.StatusCode != 200 {
		t.Errorf("health = %v %v", resp, err)
	}
}

func TestMetricsAPIAgreesWithTheAttemptsList(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	okSink := newSink(t)
	badSink := newSink(t, 500, 500)
	src, dest := h.route(okSink.srv.URL, nil, nil)
	badSrc, badDest := h.route(badSink.srv.URL, map[string]any{"retry_enabled": false}, nil)
	from := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	for i := 0; i < 3; i++ {
		h.ingest(src, `{}`)
	}
	h.ingest(badSrc, `{}`)
	h.ingest(badSrc, `{}`)
	h.quiet(10 * time.Second)
	to := time.Now().UTC().Add(time.Minute).Format(time.RFC3339)
	window := "after=" + from + "&before=" + to

	count := func(q string) int {
		_, out := h.do("GET", "/v1/delivery-attempts?limit=1&"+q, h.key, nil)
		return num(out["pagination"].(map[string]any)["total"])
	}
	code, out := h.do("GET", "/v1/metrics/deliveries?"+window, h.key, nil)
	if code != 200 {
		t.Fatalf("deliveries = %d %v", code, out)
	}
	got := map[string][3]int{}
	for _, p := range out["series"].([]any) {
		m := p.(map[string]any)
		d := m["destination_id"].(string)
		g := got[d]
		got[d] = [3]int{g[0] + num(m["delivery_count"]), g[1] + num(m["success_count"]), g[2] + num(m["failure_count"])}
	}
	for _, d := range []string{dest, badDest} {
		want := [3]int{count("destination_id=" + d), count("destination_id=" + d + "&status=success"), count("destination_id=" + d + "&status=failed")}
		if got[d] != want {
			t.Errorf("destination %s: metrics %v, attempts list %v (all, success, failed)", d, got[d], want)
		}
	}
	if got[dest] != [3]int{3, 3, 0} || got[badDest] != [3]int{2, 0, 2} {
		t.Errorf("deliveries series = %v", got)
	}
	code, out = h.do("GET", "/v1/metrics/volume?granularity=day&"+window, h.key, nil)
	total := 0
	for _, p := range out["series"].([]any) {
		total += num(p.(map[string]any)["event_count"])
	}
	if code != 200 || total != h.eventCount("") || out["granularity"] != "day" {
		t.Errorf("volume = %d %v, events list %d", code, out, h.eventCount(""))
	}
	code, out = h.do("GET", "/v1/metrics/latency?destination_id="+dest+"&"+window, h.key, nil)
	if s := out["series"].([]any); code != 200 || len(s) == 0 || num(s[0].(map[string]any)["count"]) != 3 {
		t.Errorf("latency = %d %v", code, out)
	}
	code, out = h.do("GET", "/v1/metrics/overview", h.key, nil)
	o := out["overview"].(map[string]any)
	if code != 200 || num(o["events_today"]) != 5 || num(o["deliveries_today"]) != 5 || num(o["success_today"]) != 3 ||
		num(o["dlq_count"]) != 2 || o["success_rate_today"].(float64) != 60 {
		t.Errorf("overview = %d %v", code, o)
	}
	for _, q := range []string{"granularity=week", "after=" + to + "&before=" + from, "after=2020-01-01T00:00:00Z", "before=soon"} {
		if code, _ := h.do("GET", "/v1/metrics/deliveries?"+q, h.key, nil); code != 400 {
			t.Errorf("metrics deliveries?%s = %d, want 400", q, code)
		}
	}
	if code, _ := h.do("GET", "/v1/metrics/overview", "", nil); code != 401 {
		t.Errorf("overview without a key = %d", code)
	}
}
