package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/projections"
)

// replayScenario ingests before, then inside, then after a time window and
// returns the source, the window and the ids inside it. Every event is
// delivered once to the source's own destination first.
type replayScenario struct {
	src, replayDest string
	from, to        string
	inside          []string
	replaySink      *sink
}

func newReplayScenario(t *testing.T, h *harness, inside int, replayCodes ...int) replayScenario {
	t.Helper()
	live := newSink(t)
	src, _ := h.route(live.srv.URL, nil, nil)
	// The replay target has no connection: only replays reach it.
	rs := newSink(t, replayCodes...)
	d := h.mustCreate("/v1/destinations", map[string]any{"name": "replay-target", "url": rs.srv.URL})
	sc := replayScenario{src: src, replayDest: d["id"].(string), replaySink: rs}
	// received_at is shown to the millisecond: keep the window's edges apart.
	nextMillis := func() {
		now := time.Now()
		waitFor(t, time.Second, "the clock to pass a millisecond", func() bool { return time.Since(now) > 2*time.Millisecond })
	}
	received := func(id string) time.Time {
		_, out := h.do("GET", "/v1/events/"+id, h.key, nil)
		at, err := time.Parse(time.RFC3339Nano, out["event"].(map[string]any)["received_at"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	h.ingest(src, `{"n":"before"}`)
	nextMillis()
	for i := 0; i < inside; i++ {
		sc.inside = append(sc.inside, h.ingest(src, `{"n":"inside"}`))
	}
	nextMillis()
	h.ingest(src, `{"n":"after"}`)
	waitFor(t, 10*time.Second, "every event delivered live", func() bool { return live.count() == inside+2 })
	waitFor(t, 5*time.Second, "the events listed", func() bool { return h.eventStatus(sc.inside[inside-1]) == "delivered" })
	sc.from = received(sc.inside[0]).Format(time.RFC3339Nano)
	sc.to = received(sc.inside[inside-1]).Add(time.Millisecond - time.Microsecond).Format(time.RFC3339Nano)
	return sc
}

func (h *harness) replayJob(id string) map[string]any {
	h.t.Helper()
	code, out := h.do("GET", "/v1/replay/"+id, h.key, nil)
	if code != 200 {
		h.t.Fatalf("GET replay = %d %v", code, out)
	}
	return out["job"].(map[string]any)
}

func TestReplayDeliversTheRangeAtTheRateWithoutRetries(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	// The 2nd and 5th replayed requests fail: no automatic retry may follow.
	sc := newReplayScenario(t, h, 8, 200, 500, 200, 200, 503)
	code, out := h.do("POST", "/v1/replay", h.key, map[string]any{
		"destination_id": sc.replayDest, "source_id": sc.src, "from": sc.from, "to": sc.to, "rate_limit": 5})
	if code != 201 {
		t.Fatalf("POST /v1/replay = %d %v", code, out)
	}
	job := out["job"].(map[string]any)
	if job["status"] != "running" || num(job["total"]) != 8 || job["id"] == "" {
		t.Fatalf("job = %v", job)
	}
	id := job["id"].(string)
	waitFor(t, 20*time.Second, "the replay to complete", func() bool { return h.replayJob(id)["status"] == "completed" })
	job = h.replayJob(id)
	if num(job["processed"]) != 8 || num(job["succeeded"]) != 6 || num(job["failed"]) != 2 || job["completed_at"] == nil ||
		num(job["rate_limit"]) != 5 || num(job["max_events"]) != 1000 {
		t.Errorf("completed job = %v", job)
	}
	rs := sc.replaySink
	got := rs.byEvent()
	rs.mu.Lock()
	times := append([]time.Time(nil), rs.times...)
	rs.mu.Unlock()
	if len(got) != 8 || len(times) != 8 {
		t.Fatalf("replay target got %d requests for %d events, want 8 for 8: %v", len(times), len(got), got)
	}
	for _, ev := range sc.inside {
		if got[ev] != 1 {
			t.Errorf("event %s replayed %d times, want 1", ev, got[ev])
		}
	}
	// Not faster than 5/s: the 8 requests are due 200 ms apart (1.4 s from the
	// first to the last; unthrottled they take milliseconds). The first one
	// leaves as soon as its batch is released and a later one can only be
	// late, so the span is 1.4 s less the first request's own lateness: up to
	// 400 ms of it is allowed for a busy machine (a full make test on a fresh
	// clone once measured 1.17 s; unthrottled would still be far below).
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	if span := times[7].Sub(times[0]); span < 1000*time.Millisecond {
		t.Errorf("8 requests at 5/s took %s, want at least 1.0 s (1.4 s less the first one's lateness)", span)
	}
	for _, a := range h.attempts("destination_id=" + sc.replayDest) {
		if a["trigger_type"] != "replay" || num(a["attempt_number"]) != 1 || a["next_retry_at"] != nil || num(a["is_dlq"]) != 0 {
			t.Errorf("replay attempt = %v", a)
		}
	}
	var scheduled int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM delivery_jobs WHERE destination_id = $1 AND state <> 'done'`, sc.replayDest).Scan(&scheduled); err != nil {
		t.Fatal(err)
	}
	if scheduled != 0 {
		t.Errorf("%d replay deliveries still scheduled: failures must not be retried", scheduled)
	}
	// The replay's row rebuilt from its events alone reads the same.
	before, _ := json.Marshal(h.replayJob(id))
	if _, err := projections.Rebuild(context.Background(), h.pool, "replays", projections.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(h.replayJob(id)); string(after) != string(before) {
		t.Errorf("replay job after a rebuild:\n%s\nbefore:\n%s", after, before)
	}
	// A replay does not change the replayed events' status.
	if st := h.eventStatus(sc.inside[1]); st != "delivered" {
		t.Errorf("event status after a failed replay = %q, want delivered", st)
	}
}

func TestReplayResumesAfterTheEngineStops(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sc := newReplayScenario(t, h, 30)
	code, out := h.do("POST", "/v1/replay", h.key, map[string]any{
		"destination_id": sc.replayDest, "source_id": sc.src, "from": sc.from, "to": sc.to, "rate_limit": 10, "max_events": 25})
	if code != 201 || num(out["job"].(map[string]any)["total"]) != 25 {
		t.Fatalf("POST /v1/replay = %d %v", code, out)
	}
	id := out["job"].(map[string]any)["id"].(string)
	waitFor(t, 10*time.Second, "the first batch", func() bool { return num(h.replayJob(id)["released"]) >= 10 })
	h.stopEngine()
	job := h.replayJob(id)
	if job["status"] != "running" || num(job["released"]) >= 25 {
		t.Fatalf("job after the stop = %v (the test needs it unfinished)", job)
	}
	h.startEngine()
	waitFor(t, 20*time.Second, "the replay to complete after the restart", func() bool { return h.replayJob(id)["status"] == "completed" })
	rs := sc.replaySink
	rs.mu.Lock()
	// The deliveries each event was replayed as. A request the stop cut off
	// past ShutdownGrace is not recorded and goes out again after the
	// restart under the same delivery (at least once, same Idempotency-Key);
	// what must not happen is a batch released twice: two deliveries of one
	// event.
	got := map[string]map[string]bool{}
	for _, hd := range rs.headers {
		ev := hd.Get("X-hookstream-Event-Id")
		if got[ev] == nil {
			got[ev] = map[string]bool{}
		}
		got[ev][hd.Get("X-hookstream-Delivery-Id")] = true
	}
	rs.mu.Unlock()
	// max_events keeps the 25 oldest of the 30, each replayed once.
	for i, ev := range sc.inside {
		want := 1
		if i >= 25 {
			want = 0
		}
		if len(got[ev]) != want {
			t.Errorf("event %d replayed as %d deliveries, want %d", i, len(got[ev]), want)
		}
	}
	if job := h.replayJob(id); num(job["processed"]) != 25 || num(job["succeeded"]) != 25 {
		t.Errorf("job = %v", job)
	}
}

func TestReplayBadInput(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, dest := h.route(dst.srv.URL, nil, nil)
	h.ingest(src, `{}`) // replayable at once: replays read the log, not the events list
	other := newKey(t, h.pool, "")
	from, to := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for _, c := range []struct {
		name string
		key  string
		body any
		code int
	}{
		{"malformed JSON", h.key, `{"destination_id":`, 400},
		{"wrong type", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "rate_limit": "fast"}, 400},
		{"unknown field", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "speed": 3}, 400},
		{"no destination", h.key, map[string]any{"from": from, "to": to}, 400},
		{"no from", h.key, map[string]any{"destination_id": dest, "to": to}, 400},
		{"bad time", h.key, map[string]any{"destination_id": dest, "from": "yesterday", "to": to}, 400},
		{"reversed range", h.key, map[string]any{"destination_id": dest, "from": to, "to": from}, 400},
		{"span over 90 days", h.key, map[string]any{"destination_id": dest, "from": "2026-01-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"}, 400},
		{"rate 0", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "rate_limit": 0}, 400},
		{"rate 101", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "rate_limit": 101}, 400},
		{"max_events 0", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "max_events": 0}, 400},
		{"max_events 10001", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "max_events": 10001}, 400},
		{"bad filter", h.key, map[string]any{"destination_id": dest, "from": from, "to": to, "filter": []map[string]any{{"field": "x", "op": "eq"}}}, 400},
		{"unknown destination", h.key, map[string]any{"destination_id": "0123456789abcdef0123456789abcdef", "from": from, "to": to}, 404},
		{"unknown source", h.key, map[string]any{"destination_id": dest, "source_id": "0123456789abcdef0123456789abcdef", "from": from, "to": to}, 404},
		{"another tenant's destination", other, map[string]any{"destination_id": dest, "from": from, "to": to}, 404},
		{"no events in range", h.key, map[string]any{"destination_id": dest, "from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}, 404},
		{"no auth", "", map[string]any{"destination_id": dest, "from": from, "to": to}, 401},
	} {
		code, out := h.do("POST", "/v1/replay", c.key, c.body)
		if code != c.code || out["error"] == "" || num(out["status"]) != c.code {
			t.Errorf("%s: %d %v, want %d with an error body", c.name, code, out, c.code)
		}
	}
	for _, id := range []string{"0123456789abcdef0123456789abcdef", "nope"} {
		if code, out := h.do("GET", "/v1/replay/"+id, h.key, nil); code != 404 {
			t.Errorf("GET replay %s = %d %v", id, code, out)
		}
	}
	code, out := h.do("GET", "/v1/replay", h.key, nil)
	if code != 200 || num(out["pagination"].(map[string]any)["total"]) != 0 {
		t.Errorf("refused requests created jobs: %d %v", code, out)
	}
	var streams int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE stream_type = 'replay'`).Scan(&streams); err != nil || streams != 0 {
		t.Errorf("replay events after refused requests: %d (%v)", streams, err)
	}
	// Another tenant cannot read a job.
	code, out = h.do("POST", "/v1/replay", h.key, map[string]any{"destination_id": dest, "from": from, "to": to})
	if code != 201 {
		t.Fatalf("valid replay = %d %v", code, out)
	}
	if code, _ := h.do("GET", "/v1/replay/"+out["job"].(map[string]any)["id"].(string), other, nil); code != 404 {
		t.Errorf("another tenant's job = %d, want 404", code)
	}
}

func TestEventRetryRetriesOnlyFailedDeliveries(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	good := newSink(t)
	bad := newSink(t, 500) // fails once, then recovers
	src, _ := h.route(good.srv.URL, nil, nil)
	d := h.mustCreate("/v1/destinations", map[string]any{"name": "flaky", "url": bad.srv.URL, "retry_enabled": false})
	h.mustCreate("/v1/connections", map[string]any{"name": "c2", "source_id": src, "destination_id": d["id"]})
	ev := h.ingest(src, `{"k":1}`)
	waitFor(t, 10*time.Second, "the event to fail", func() bool { return h.eventStatus(ev) == "failed" })

	code, out := h.do("POST", "/v1/events/"+ev+"/retry", h.key, nil)
	if code != 200 {
		t.Fatalf("event retry = %d %v", code, out)
	}
	retried := out["retried"].([]any)
	if len(retried) != 1 || len(out["errors"].([]any)) != 0 {
		t.Fatalf("event retry = %v, want one retried and no errors", out)
	}
	a := retried[0].(map[string]any)
	if a["destination_id"] != d["id"] || a["trigger_type"] != "manual" || num(a["attempt_number"]) != 2 {
		t.Errorf("retried attempt = %v", a)
	}
	waitFor(t, 10*time.Second, "the event to be delivered", func() bool { return h.eventStatus(ev) == "delivered" })
	if good.count() != 1 || bad.count() != 2 {
		t.Errorf("requests: good %d, flaky %d; want 1 and 2", good.count(), bad.count())
	}
	code, out = h.do("POST", "/v1/events/"+ev+"/retry", h.key, nil)
	if code != 200 || len(out["retried"].([]any)) != 0 || out["message"] == "" {
		t.Errorf("second event retry = %d %v, want nothing retried", code, out)
	}
	for _, id := range []string{"0123456789abcdef0123456789abcdef", "bad"} {
		if code, _ := h.do("POST", "/v1/events/"+id+"/retry", h.key, nil); code != 404 {
			t.Errorf("retry of unknown event %s = %d", id, code)
		}
	}
	if code, _ := h.do("POST", "/v1/events/"+ev+"/retry", newKey(t, h.pool, ""), nil); code != 404 {
		t.Errorf("another tenant's event retry = %d, want 404", code)
	}
}

// An environment runs at most ReplayMaxRunning replays at once: the next is a
// 409 that says so, and nothing of it is stored.
func TestReplaysPerEnvironmentAreBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sc := newReplayScenario(t, h, 10) // at 1/s each replay runs 10 s: all are running when the next is asked for
	body := map[string]any{"destination_id": sc.replayDest, "source_id": sc.src, "from": sc.from, "to": sc.to, "rate_limit": 1}
	for i := 0; i < domain.ReplayMaxRunning; i++ {
		if code, out := h.do("POST", "/v1/replay", h.key, body); code != 201 {
			t.Fatalf("replay %d = %d %v", i+1, code, out)
		}
	}
	code, out := h.do("POST", "/v1/replay", h.key, body)
	if code != 409 || !strings.Contains(fmt.Sprint(out["error"]), "Too many running replays") {
		t.Fatalf("replay %d = %d %v, want 409", domain.ReplayMaxRunning+1, code, out)
	}
	var jobs int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM replay_jobs`).Scan(&jobs); err != nil || jobs != domain.ReplayMaxRunning {
		t.Fatalf("%d replay jobs stored (%v), want %d", jobs, err, domain.ReplayMaxRunning)
	}
}

// A running replay can be cancelled: no batch is released after the cancel,
// the deliveries already released finish, its slot among the running
// replays is free again, and the row rebuilt from the log reads the same.
// Another tenant's cancel is a 404; a second cancel a 409.
func TestReplayCancelStopsTheNextBatches(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sc := newReplayScenario(t, h, 10)
	code, out := h.do("POST", "/v1/replay", h.key, map[string]any{
		"destination_id": sc.replayDest, "source_id": sc.src, "from": sc.from, "to": sc.to, "rate_limit": 2})
	if code != 201 {
		t.Fatalf("POST /v1/replay = %d %v", code, out)
	}
	id := out["job"].(map[string]any)["id"].(string)
	waitFor(t, 10*time.Second, "the first batch", func() bool { return num(h.replayJob(id)["released"]) >= 2 })
	if code, out := h.do("POST", "/v1/replay/"+id+"/cancel", newKey(t, h.pool, ""), nil); code != 404 {
		t.Fatalf("another tenant's cancel = %d %v", code, out)
	}
	code, out = h.do("POST", "/v1/replay/"+id+"/cancel", h.key, nil)
	job, _ := out["job"].(map[string]any)
	if code != 200 || job["status"] != "cancelled" || job["cancelled_at"] == nil {
		t.Fatalf("cancel = %d %v", code, out)
	}
	released := num(job["released"])
	if released < 2 || released >= 10 {
		t.Fatalf("released %v at the cancel, want some but not all (the test needs it unfinished)", released)
	}
	if code, out := h.do("POST", "/v1/replay/"+id+"/cancel", h.key, nil); code != 409 || !strings.Contains(fmt.Sprint(out["error"]), "already cancelled") {
		t.Fatalf("second cancel = %d %v", code, out)
	}
	// The released deliveries finish; by then the releaser has passed the
	// job's next batch time more than once.
	waitFor(t, 10*time.Second, "the released deliveries processed", func() bool {
		j := h.replayJob(id)
		return num(j["processed"]) == released && num(j["released"]) == released
	})
	var after int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM events e, events c
		WHERE e.stream_id = $1 AND c.stream_id = $1 AND c.event_type = 'ReplayCancelled' AND e.event_type = 'ReplayReleased'
			AND e.stream_version > c.stream_version`, id).Scan(&after); err != nil || after != 0 {
		t.Fatalf("%d batches released after the cancel (%v)", after, err)
	}
	if j := h.replayJob(id); j["status"] != "cancelled" || num(j["released"]) != released || sc.replaySink.count() != int(released) {
		t.Fatalf("job %v, %d requests at the destination; want %v", j, sc.replaySink.count(), released)
	}
	var running int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM replay_jobs WHERE status = 'running'`).Scan(&running); err != nil || running != 0 {
		t.Fatalf("%d replays still count as running (%v)", running, err)
	}
	before, _ := json.Marshal(h.replayJob(id))
	if _, err := projections.Rebuild(context.Background(), h.pool, "replays", projections.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(h.replayJob(id)); string(after) != string(before) {
		t.Errorf("replay job after a rebuild:\n%s\nbefore:\n%s", after, before)
	}
	if code, _ := h.do("POST", "/v1/replay/0123456789abcdef0123456789abcdef/cancel", h.key, nil); code != 404 {
		t.Errorf("cancel of an unknown replay = %d", code)
	}
}

// A replay lists its events when requested; a history pass inside a batch
// at that moment may remove one of them before its batch is released. The
// release leaves it out, counts it as skipped, and the replay completes
// with the others (it showed running until its row was pruned, 24 h on).
func TestReplayCompletesWithoutAWebhookRemovedBeforeItsBatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	sc := newReplayScenario(t, h, 3)
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	if code, out := h.do("PATCH", "/v1/environments/"+sess["env_id"].(string), h.key, map[string]any{"history_retention_days": 0.0007}); code != 200 {
		t.Fatalf("PATCH = %d %v", code, out)
	}
	h.stopEngine() // nothing is released until the webhook is gone
	code, out := h.do("POST", "/v1/replay", h.key, map[string]any{
		"destination_id": sc.replayDest, "source_id": sc.src, "from": sc.from, "to": sc.to, "rate_limit": 10})
	if code != 201 || num(out["job"].(map[string]any)["total"]) != 3 {
		t.Fatalf("POST /v1/replay = %d %v", code, out)
	}
	id := out["job"].(map[string]any)["id"].(string)
	// What a history pass removes of the middle webhook: its events and its
	// delivery's, under the trigger's history exception.
	gone := sc.inside[1]
	tx, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	if _, err := tx.Exec(ctx, `SELECT set_config('hookstream.retention', 'history', true)`); err != nil {
		t.Fatal(err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM events WHERE (stream_type = 'event' AND stream_id = $1)
		OR (stream_type = 'delivery' AND stream_id IN (SELECT stream_id FROM events WHERE event_type = 'DeliveryRequested' AND payload->>'event_id' = $1))`, gone)
	if err != nil || tag.RowsAffected() < 3 {
		t.Fatalf("remove the webhook: %v rows, %v", tag.RowsAffected(), err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	h.startEngine()
	waitFor(t, 20*time.Second, "the replay to complete", func() bool { return h.replayJob(id)["status"] == "completed" })
	job := h.replayJob(id)
	if num(job["total"]) != 3 || num(job["released"]) != 3 || num(job["processed"]) != 2 || num(job["succeeded"]) != 2 ||
		num(job["skipped"]) != 1 || job["completed_at"] == nil {
		t.Errorf("job = %v, want 2 of 3 processed and 1 skipped", job)
	}
	got := sc.replaySink.byEvent()
	if len(got) != 2 || got[gone] != 0 || got[sc.inside[0]] != 1 || got[sc.inside[2]] != 1 {
		t.Errorf("replayed = %v, want the first and the last once each", got)
	}
	// The same row rebuilt from the replay's events.
	before, _ := json.Marshal(job)
	if _, err := projections.Rebuild(ctx, h.pool, "replays", projections.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(h.replayJob(id)); string(after) != string(before) {
		t.Errorf("replay job after a rebuild:\n%s\nbefore:\n%s", after, before)
	}
}
