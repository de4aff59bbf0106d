package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/projections"
)

// dump returns every item of a paginated list endpoint as canonical JSON by id.
func (h *harness) dump(path, key string) map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for offset := 0; ; offset += 100 {
		code, page := h.do("GET", fmt.Sprintf("%s?limit=100&offset=%d", path, offset), h.key, nil)
		if code != 200 {
			h.t.Fatalf("GET %s = %d %v", path, code, page)
		}
		items := page[key].([]any)
		for _, it := range items {
			raw, _ := json.Marshal(it)
			out[it.(map[string]any)["id"].(string)] = string(raw)
		}
		if len(items) < 100 {
			return out
		}
	}
}

// rows returns a table's rows as JSON by id, at full precision.
func (h *harness) rows(table string) map[string]string {
	h.t.Helper()
	rows, err := h.pool.Query(context.Background(), `SELECT id, row_to_json(t)::text FROM `+table+` t`)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, js string
		if err := rows.Scan(&id, &js); err != nil {
			h.t.Fatal(err)
		}
		out[id] = js
	}
	return out
}

// quiet waits until nothing is pending and every consumer group has caught up.
func (h *harness) quiet(timeout time.Duration) { h.quietExcept(timeout, 0) }

func diff(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	if len(want) != len(got) {
		t.Errorf("%s: %d items, want %d", what, len(got), len(want))
	}
	n := 0
	for id, w := range want {
		if g := got[id]; g != w && n < 5 {
			n++
			t.Errorf("%s %s differs:\n want %s\n  got %s", what, id, w, g)
		}
	}
}

// mixedWorkload produces successes, automatic retries, dead letters, manual
// retries (one succeeding, one failing back into the DLQ), and renames.
func mixedWorkload(t *testing.T, h *harness) (okSource string) {
	ok := newSink(t)
	okSource, okDest := h.route(ok.srv.URL, nil, nil)
	// Fails twice, then recovers: retries that end in success.
	flaky := newSink(t, 500, 503)
	flakySrc, _ := h.route(flaky.srv.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed"}, nil)
	// Always fails until told otherwise: the DLQ and manual retries.
	var deadOK atomic.Bool
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if deadOK.Load() {
			w.WriteHeader(200)
			return
		}
		w.WriteHeader(502)
	}))
	t.Cleanup(dead.Close)
	deadSrc, deadDest := h.route(dead.URL, map[string]any{"retry_intervals": []int{0}, "retry_max_attempts": 1, "retry_backoff_type": "fixed", "circuit_breaker_enabled": false}, nil)

	var okEvents []string
	for i := 0; i < 10; i++ {
		okEvents = append(okEvents, h.ingest(okSource, fmt.Sprintf(`{"n":%d}`, i)))
	}
	flakyEv := h.ingest(flakySrc, `{"flaky":true}`)
	dead1, dead2 := h.ingest(deadSrc, `{"dead":1}`), h.ingest(deadSrc, `{"dead":2}`)
	waitFor(t, 15*time.Second, "the workload to settle", func() bool {
		return h.eventStatus(flakyEv) == "delivered" && h.eventStatus(dead1) == "failed" && h.eventStatus(dead2) == "failed" &&
			h.eventStatus(okEvents[9]) == "delivered"
	})
	// A manual retry that fails goes back to the DLQ.
	if code, out := h.do("POST", "/v1/events/"+dead1+"/retry", h.key, nil); code != 200 || len(out["retried"].([]any)) != 1 {
		t.Fatalf("event retry = %d %v", code, out)
	}
	h.quiet(10 * time.Second)
	// One that succeeds.
	deadOK.Store(true)
	if code, out := h.do("POST", "/v1/events/"+dead2+"/retry", h.key, nil); code != 200 || len(out["retried"].([]any)) != 1 {
		t.Fatalf("event retry = %d %v", code, out)
	}
	// Renames, after some attempts were recorded.
	if code, out := h.do("PATCH", "/v1/destinations/"+okDest, h.key, map[string]any{"name": "renamed-dest"}); code != 200 {
		t.Fatalf("rename = %d %v", code, out)
	}
	if code, out := h.do("PATCH", "/v1/destinations/"+deadDest, h.key, map[string]any{"name": "dead-renamed"}); code != 200 {
		t.Fatalf("rename = %d %v", code, out)
	}
	h.ingest(okSource, `{"after":"rename"}`)
	h.quiet(10 * time.Second)
	return okSource
}

func TestRebuildEqualsLive(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	okSource := mixedWorkload(t, h)
	liveAttempts, liveEvents := h.dump("/v1/delivery-attempts", "delivery_attempts"), h.dump("/v1/events", "events")
	liveRows := h.rows("delivery_attempts")
	if len(liveAttempts) < 20 {
		t.Fatalf("workload made only %d attempts", len(liveAttempts))
	}

	// Webhooks keep arriving while both read models are rebuilt.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := http.Post(h.api.URL+"/v1/ingest/"+okSource, "application/json", strings.NewReader(`{"during":"rebuild"}`))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("ingest during the rebuild = %d", resp.StatusCode)
				return
			}
			sent.Add(1)
		}
	}()
	ctx := context.Background()
	for _, name := range []string{"delivery_attempts", "events"} {
		waitFor(t, 10*time.Second, "webhooks arriving", func() bool { return sent.Load() >= 5 })
		var phases []string
		res, err := projections.Rebuild(ctx, h.pool, name, projections.RebuildOptions{Chunk: 25, Progress: func(p projections.Progress) {
			if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
				phases = append(phases, p.Phase)
			}
		}})
		if err != nil {
			t.Fatalf("rebuild %s: %v", name, err)
		}
		if res.Rows == 0 || res.Events == 0 || strings.Join(phases, ",") != "read,index,catch-up,swap" {
			t.Errorf("rebuild %s = %+v, phases %v", name, res, phases)
		}
	}
	waitFor(t, 10*time.Second, "webhooks arriving after the rebuild", func() bool { return sent.Load() >= 15 })
	close(stop)
	wg.Wait()
	h.quiet(15 * time.Second)

	rebuiltAttempts, rebuiltEvents := h.dump("/v1/delivery-attempts", "delivery_attempts"), h.dump("/v1/events", "events")
	for id, want := range liveAttempts {
		if rebuiltAttempts[id] != want {
			t.Errorf("attempt %s changed by the rebuild:\n before %s\n  after %s", id, want, rebuiltAttempts[id])
		}
	}
	for id, want := range liveEvents {
		if rebuiltEvents[id] != want {
			t.Errorf("event %s changed by the rebuild:\n before %s\n  after %s", id, want, rebuiltEvents[id])
		}
	}
	rebuiltRows := h.rows("delivery_attempts")
	for id, want := range liveRows {
		if rebuiltRows[id] != want {
			t.Errorf("row %s changed by the rebuild:\n before %s\n  after %s", id, want, rebuiltRows[id])
		}
	}
	if got, want := len(rebuiltAttempts), len(liveAttempts)+int(sent.Load()); got != want {
		t.Errorf("%d attempts after the rebuild, want %d (%d new webhooks)", got, want, sent.Load())
	}
	for id, a := range rebuiltAttempts {
		if _, old := liveAttempts[id]; !old && !strings.Contains(a, `"status":"success"`) {
			t.Errorf("attempt made during the rebuild: %s", a)
		}
	}
	// The reference: every event through the live projection code, one at a time.
	for _, name := range []string{"delivery_attempts", "events"} {
		if _, err := projections.Rebuild(ctx, h.pool, name, projections.RebuildOptions{EventAtATime: true}); err != nil {
			t.Fatalf("reference rebuild %s: %v", name, err)
		}
	}
	diff(t, "attempt (set-based under traffic vs event at a time)", h.dump("/v1/delivery-attempts", "delivery_attempts"), rebuiltAttempts)
	diff(t, "event (set-based under traffic vs event at a time)", h.dump("/v1/events", "events"), rebuiltEvents)
	diff(t, "attempt row (set-based under traffic vs event at a time)", h.rows("delivery_attempts"), rebuiltRows)
}

func TestSchedulerRebuildSendsNoDuplicates(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var mu sync.Mutex
	requests := map[string]int{}
	// The retries are held at the destination until enough rebuilds have run:
	// the test holds the condition it needs instead of hoping for timing.
	const wantRebuilds = 3
	release := make(chan struct{})
	var releaseOnce sync.Once
	var held atomic.Int32 // retries waiting at the destination
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		id := r.Header.Get("X-hookstream-Event-Id")
		requests[id]++
		n := requests[id]
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(500) // every first attempt fails: retries come due during the rebuilds
			return
		}
		held.Add(1)
		<-release
		w.WriteHeader(200)
	}))
	t.Cleanup(dst.Close)
	src, _ := h.route(dst.URL, map[string]any{"retry_intervals": []int{1}, "retry_backoff_type": "fixed", "circuit_breaker_enabled": false}, nil)
	var events []string
	for i := 0; i < 40; i++ {
		events = append(events, h.ingest(src, fmt.Sprintf(`{"i":%d}`, i)))
	}
	ctx := context.Background()
	rebuilds := 0 // while retries were in flight or due
	deadline := time.Now().Add(time.Minute)
	for !allDelivered(h, events) {
		inFlight := held.Load() > 0
		res, err := projections.Rebuild(ctx, h.pool, "scheduler", projections.RebuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Repaired != 0 {
			t.Errorf("rebuild %d repaired %d jobs of a healthy table", rebuilds, res.Repaired)
		}
		if inFlight {
			rebuilds++
		}
		if rebuilds == wantRebuilds {
			releaseOnce.Do(func() { close(release) })
		}
		if time.Now().After(deadline) {
			t.Fatal("deliveries did not finish")
		}
	}
	if rebuilds < wantRebuilds {
		t.Fatalf("only %d rebuilds ran while deliveries were due", rebuilds)
	}
	h.quiet(10 * time.Second)
	mu.Lock()
	for _, ev := range events {
		if requests[ev] != 2 {
			t.Errorf("event %s: %d requests, want 2 (one failure, one success)", ev, requests[ev])
		}
	}
	mu.Unlock()

	// Lost scheduler state comes back from the log alone: with the engine
	// stopped, new webhooks arrive and every job row is deleted.
	h.stopEngine()
	var fresh []string
	for i := 0; i < 5; i++ {
		fresh = append(fresh, h.ingest(src, fmt.Sprintf(`{"fresh":%d}`, i)))
	}
	tag, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs`)
	if err != nil {
		t.Fatal(err)
	}
	res, err := projections.Rebuild(ctx, h.pool, "scheduler", projections.RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Repaired != tag.RowsAffected() || res.Rows != 45 {
		t.Errorf("rebuild after losing %d rows = %+v", tag.RowsAffected(), res)
	}
	h.startEngine()
	waitFor(t, 15*time.Second, "the new webhooks delivered", func() bool { return allDelivered(h, fresh) })
	h.quiet(10 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	for _, ev := range events {
		if requests[ev] != 2 {
			t.Errorf("old event %s re-sent after the rebuild: %d requests", ev, requests[ev])
		}
	}
}

func allDelivered(h *harness, events []string) bool {
	for _, ev := range events {
		if h.eventStatus(ev) != "delivered" {
			return false
		}
	}
	return true
}

func TestProjectionsStatusShowsLagAndLastError(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	h.ingest(src, `{}`)
	h.quiet(10 * time.Second)
	ctx := context.Background()
	st, err := projections.Status(ctx, h.pool, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 3 {
		t.Fatalf("status = %+v", st)
	}
	for _, g := range st {
		// The scheduler reads only retry requests live: none yet, so it is
		// at position 0 with nothing to do.
		moved := g.Position != 0 || g.Group == projections.GroupScheduler
		if !moved || g.LagEvents != 0 || g.LastError != nil {
			t.Errorf("healthy group = %+v", g)
		}
	}
	// An event the events projector cannot decode stops it there.
	store := eventstore.New(nil)
	if _, err := store.Append(ctx, h.pool, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: uuid.NewString(), Expected: eventstore.NoStream,
		Events: []eventstore.NewEvent{{Type: domain.EvMovedToDLQ, Payload: map[string]any{"event_id": 42}}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the failure in the status", func() bool {
		st, err := projections.Status(ctx, h.pool, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range st {
			if g.Group == projections.GroupEvents {
				return g.LastError != nil && strings.Contains(*g.LastError, "MovedToDLQ") && g.LagEvents == 1 && g.Failures >= 1
			}
		}
		return false
	})
}
