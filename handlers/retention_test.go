package handlers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers/retention"
	"github.com/hookstream/hookstream/projections"
)

// Retention expires the payloads of finished webhooks past the
// environment's retention, and only those: a webhook whose delivery is
// still scheduled keeps its body, another environment (default 30 days)
// keeps everything. The event log keeps every event with its ids, sizes and
// a hash of each body; the read models show the expiry as a rebuild does;
// an expired webhook cannot be retried or replayed; events stay immutable
// to anyone else; a second pass starts where the first stopped.
func TestRetentionExpiresFinishedPayloadsAndKeepsTheLog(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	ok, failing := newSink(t), newSink(t, 500, 500, 500)
	srcDone, _ := h.route(ok.srv.URL, nil, nil)
	srcLive, _ := h.route(failing.srv.URL, map[string]any{"retry_intervals": []int{3600}, "retry_backoff_type": "fixed",
		"circuit_breaker_enabled": false}, nil)
	var done []string
	bodies := map[string]string{}
	for i := 0; i < 4; i++ {
		body := fmt.Sprintf(`{"secret":"card-%d"}`, i)
		id := h.ingest(srcDone, body)
		done, bodies[id] = append(done, id), body
	}
	live := h.ingest(srcLive, `{"still":"retrying"}`)
	other := newKey(t, h.pool, "")
	code, out := h.do("POST", "/v1/sources", other, map[string]any{"name": "theirs"})
	if code != 201 {
		t.Fatalf("other tenant's source = %d %v", code, out)
	}
	theirs := h.ingest(out["source"].(map[string]any)["id"].(string), `{"theirs":true}`)
	waitFor(t, 10*time.Second, "the deliveries, the failed first attempt and the other tenant's event listed", func() bool {
		theirsListed, _ := h.do("GET", "/v1/events/"+theirs, other, nil)
		return ok.count() == 4 && len(h.attempts("event_id="+live)) == 1 && h.eventStatus(done[3]) == "delivered" && theirsListed == 200
	})
	before := map[string]any{}
	for _, id := range done {
		_, out := h.do("GET", "/v1/delivery-attempts?event_id="+id, h.key, nil)
		before[id] = out["delivery_attempts"].([]any)[0]
	}

	// 60 s of retention, and a pass run two minutes from now.
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	envID := sess["env_id"].(string)
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"payload_retention_days": 0.0007}); code != 200 ||
		out["environment"].(map[string]any)["payload_retention_days"].(float64) < 0.0007 {
		t.Fatalf("PATCH retention = %d %v", code, out)
	}
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"payload_retention_days": 0.0001}); code != 400 {
		t.Fatalf("a retention under 60 s = %d %v", code, out)
	}
	later := func() time.Time { return time.Now().Add(2 * time.Minute) }
	rep, err := retention.New(retention.Params{Pool: h.pool, Now: later, Batch: 3}).Run(ctx)
	if err != nil || !rep.Ran {
		t.Fatalf("retention pass = %+v %v", rep, err)
	}
	var mine retention.EnvReport
	for _, e := range rep.Envs {
		if e.EnvID == envID {
			mine = e
		} else if e.Events+e.Attempts != 0 {
			t.Errorf("environment %s (30 days) lost payloads: %+v", e.EnvID, e)
		}
	}
	// 4 webhooks and their 4 attempts (the live one's failed attempt stays with it).
	if mine.Events != 4 || mine.Attempts != 4 || mine.Bytes <= 0 || mine.OldestPayloadAt == nil {
		t.Fatalf("pass in the environment = %+v", mine)
	}

	for _, id := range done {
		code, out := h.do("GET", "/v1/events/"+id, h.key, nil)
		ev := out["event"].(map[string]any)
		sum := sha256.Sum256([]byte(bodies[id]))
		if code != 200 || ev["payload"] != nil || ev["headers"] != nil || ev["payload_inline"] != nil || ev["payload_expired_at"] == nil ||
			ev["body_sha256"] != hex.EncodeToString(sum[:]) || num(ev["payload_size"]) != len(bodies[id]) {
			t.Fatalf("expired event %s = %d %v", id, code, ev)
		}
		_, out = h.do("GET", "/v1/delivery-attempts?event_id="+id, h.key, nil)
		a := out["delivery_attempts"].([]any)[0].(map[string]any)
		b := before[id].(map[string]any)
		if a["request_headers"] != nil || a["response_body"] != nil || a["response_headers"] != nil || a["status"] != b["status"] ||
			a["id"] != b["id"] || a["response_status"] != b["response_status"] || a["request_body_size"] != b["request_body_size"] {
			t.Fatalf("expired attempt = %v, before %v", a, b)
		}
		if code, out := h.do("POST", "/v1/delivery-attempts/"+a["id"].(string)+"/retry", h.key, nil); code != 400 ||
			!strings.Contains(fmt.Sprint(out["error"]), "payload expired") {
			t.Fatalf("retry of an expired webhook = %d %v", code, out)
		}
	}
	var leaked int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE stream_id = ANY($1) AND position('card-' IN payload::text) > 0`, done).Scan(&leaked); err != nil || leaked != 0 {
		t.Fatalf("%d events still hold an expired body (%v)", leaked, err)
	}
	for id, key := range map[string]string{live: h.key, theirs: other} {
		if _, out := h.do("GET", "/v1/events/"+id, key, nil); out["event"].(map[string]any)["payload"] == nil {
			t.Errorf("event %s lost its payload: %v", id, out)
		}
	}
	var recorded int
	if err := h.pool.QueryRow(ctx, `SELECT coalesce(sum((payload->>'events')::int), 0) FROM events WHERE event_type = 'PayloadsExpired' AND env_id = $1`,
		envID).Scan(&recorded); err != nil || recorded != 4 {
		t.Fatalf("PayloadsExpired events count %d webhooks (%v), want 4", recorded, err)
	}
	// Replaying the range finds nothing left to send.
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	_, dests := h.do("GET", "/v1/destinations", h.key, nil)
	for _, d := range dests["destinations"].([]any) {
		dm := d.(map[string]any)
		if code, _ := h.do("POST", "/v1/replay", h.key, map[string]any{"destination_id": dm["id"], "source_id": srcDone, "from": from, "to": to}); code == 201 {
			t.Errorf("a replay of expired webhooks to %s was accepted", dm["name"])
		}
	}

	// Nobody else may change an event; the retention form is the only change, once.
	for _, q := range []string{
		`UPDATE events SET payload = '{}' WHERE stream_id = '` + live + `'`,
		`DELETE FROM events WHERE stream_id = '` + live + `'`,
		`BEGIN; SELECT set_config('hookstream.retention', 'on', true); UPDATE events SET payload = payload || '{"payload_expired_at":"2026-01-01T00:00:00Z"}' WHERE stream_id = '` + live + `'; COMMIT`,
		`BEGIN; SELECT set_config('hookstream.retention', 'on', true); UPDATE events SET stream_version = stream_version WHERE stream_id = '` + done[0] + `'; COMMIT`,
	} {
		if _, err := h.pool.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "immutable") {
			t.Errorf("%s: %v, want refused", q, err)
		}
		_, _ = h.pool.Exec(ctx, `ROLLBACK`)
	}

	// Rebuilt read models read the same as live.
	snapshot := func() string {
		var parts []string
		for _, id := range append(done, live) {
			_, a := h.do("GET", "/v1/delivery-attempts?event_id="+id, h.key, nil)
			_, e := h.do("GET", "/v1/events/"+id, h.key, nil)
			ea, _ := json.Marshal(a["delivery_attempts"])
			ee, _ := json.Marshal(e["event"])
			parts = append(parts, string(ea), string(ee))
		}
		return strings.Join(parts, "\n")
	}
	live1 := snapshot()
	for _, name := range []string{"delivery_attempts", "events"} {
		if _, err := projections.Rebuild(ctx, h.pool, name, projections.RebuildOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if rebuilt := snapshot(); rebuilt != live1 {
		t.Fatalf("after a rebuild:\n%s\nlive:\n%s", rebuilt, live1)
	}
	if _, err := projections.Rebuild(ctx, h.pool, "delivery_attempts", projections.RebuildOptions{EventAtATime: true}); err != nil {
		t.Fatal(err)
	}
	if rebuilt := snapshot(); rebuilt != live1 {
		t.Fatalf("after an event-at-a-time rebuild:\n%s\nlive:\n%s", rebuilt, live1)
	}

	// A second pass has nothing left, and keeps the live webhook's body.
	rep, err = retention.New(retention.Params{Pool: h.pool, Now: later}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Envs {
		if e.Events+e.Attempts != 0 {
			t.Errorf("second pass expired %+v", e)
		}
	}
	st, err := retention.Status(ctx, h.pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.EnvID == envID && (s.EventsExpired != 4 || s.AttemptsExpired != 4 || s.OldestPayloadAt == nil || s.LastRun == nil) {
			t.Errorf("status = %+v", s)
		}
	}
	// Once the held-back delivery finishes (a manual retry, answered 200),
	// a later pass expires it from its held position.
	var held int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM retention_held WHERE env_id = $1`, envID).Scan(&held); err != nil || held != 2 {
		t.Fatalf("%d payloads held (%v), want the live webhook and its failed attempt", held, err)
	}
	liveAttempt := h.attempts("event_id=" + live)[0]["id"].(string)
	failing.mu.Lock()
	failing.codes = nil
	failing.mu.Unlock()
	if code, out := h.do("POST", "/v1/delivery-attempts/"+liveAttempt+"/retry", h.key, nil); code != 200 ||
		out["delivery_attempt"].(map[string]any)["status"] != "success" {
		t.Fatalf("retry of the held delivery = %d %v", code, out)
	}
	rep, err = retention.New(retention.Params{Pool: h.pool, Now: func() time.Time { return time.Now().Add(3 * time.Minute) }}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Envs {
		if e.EnvID == envID && (e.Events != 1 || e.Attempts != 2) {
			t.Errorf("pass after the held delivery finished = %+v, want its webhook and both attempts", e)
		}
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM retention_held WHERE env_id = $1`, envID).Scan(&held); err != nil || held != 0 {
		t.Fatalf("%d payloads still held (%v)", held, err)
	}
}

// An environment that archives its payloads keeps them all, while serve has
// no archive directory, and with one writes each batch's events, whole, to
// an NDJSON file (0600) before their payloads go.
func TestRetentionArchivesBeforeItExpires(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	sink := newSink(t)
	src, _ := h.route(sink.srv.URL, nil, nil)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, h.ingest(src, fmt.Sprintf(`{"archived":%d}`, i)))
	}
	waitFor(t, 10*time.Second, "the deliveries", func() bool { return sink.count() == 3 && h.eventStatus(ids[2]) == "delivered" })
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	envID := sess["env_id"].(string)
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"payload_retention_days": 0.001, "archive_payloads": 1}); code != 200 {
		t.Fatalf("PATCH = %d %v", code, out)
	}
	later := func() time.Time { return time.Now().Add(5 * time.Minute) }
	rep, err := retention.New(retention.Params{Pool: h.pool, Now: later}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Envs {
		if e.EnvID == envID && (e.Events != 0 || e.Held == "") {
			t.Fatalf("without an archive directory = %+v", e)
		}
	}
	dir := t.TempDir()
	rep, err = retention.New(retention.Params{Pool: h.pool, Now: later, ArchiveDir: dir}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range rep.Envs {
		if e.EnvID == envID {
			if e.Events != 3 || e.Attempts != 3 || len(e.Archives) != 1 {
				t.Fatalf("with an archive directory = %+v", e)
			}
			files = e.Archives
		}
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(files[0]); st.Mode().Perm() != 0o600 || !strings.HasPrefix(files[0], filepath.Join(dir, "")) {
		t.Errorf("archive %s mode %v", files[0], st.Mode().Perm())
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	found := 0
	for _, l := range lines {
		var ev struct {
			EventType string          `json:"event_type"`
			StreamID  string          `json:"stream_id"`
			Payload   json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("archive line %q: %v", l, err)
		}
		if ev.EventType == "EventReceived" && strings.Contains(string(ev.Payload), `"body_b64"`) {
			found++
		}
	}
	if len(lines) != 6 || found != 3 {
		t.Fatalf("archive holds %d lines, %d webhooks with their bodies:\n%s", len(lines), found, raw)
	}
}

// History retention removes each finished webhook whole once its newest
// event is older than the environment's history retention: its event, its
// deliveries' streams and every read-model row of them, in the log and the
// lists (totals included), and records a HistoryExpired event. A webhook
// whose delivery still has a job row is held and removed once the row is
// gone; another tenant's environment is counted apart; only the pass may
// delete events, and only in an environment that bounds its history; read
// models rebuilt afterwards equal the live ones.
func TestHistoryRetentionRemovesFinishedWebhooksWhole(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	ok, failing := newSink(t), newSink(t, 500, 500, 500)
	srcDone, _ := h.route(ok.srv.URL, nil, nil)
	srcLive, _ := h.route(failing.srv.URL, map[string]any{"retry_intervals": []int{3600}, "retry_backoff_type": "fixed",
		"circuit_breaker_enabled": false}, nil)
	var done []string
	for i := 0; i < 5; i++ {
		done = append(done, h.ingest(srcDone, fmt.Sprintf(`{"n":%d}`, i)))
	}
	live := h.ingest(srcLive, `{"still":"retrying"}`)
	// A dead-lettered webhook: its delivery is linked to an issue.
	srcDead, _ := h.route(newSink(t, 500, 500, 500).srv.URL, map[string]any{"retry_max_attempts": 1, "retry_intervals": []int{0},
		"retry_backoff_type": "fixed", "circuit_breaker_enabled": false}, nil)
	dead := h.ingest(srcDead, `{"dead":"letter"}`)
	other := newKey(t, h.pool, "")
	code, out := h.do("POST", "/v1/sources", other, map[string]any{"name": "theirs"})
	if code != 201 {
		t.Fatalf("other tenant's source = %d %v", code, out)
	}
	theirs := h.ingest(out["source"].(map[string]any)["id"].(string), `{"theirs":true}`)
	waitFor(t, 10*time.Second, "the deliveries, the failed first attempt and the dead letter listed", func() bool {
		theirsListed, _ := h.do("GET", "/v1/events/"+theirs, other, nil)
		return ok.count() == 5 && len(h.attempts("event_id="+live)) == 1 && h.eventStatus(done[4]) == "delivered" && theirsListed == 200 &&
			h.eventStatus(dead) == "failed"
	})
	// One removed attempt is retried by hand first: its webhook goes with
	// the retry's events.
	doneAttempt := h.attempts("event_id=" + done[0])[0]["id"].(string)
	if code, out := h.do("POST", "/v1/delivery-attempts/"+doneAttempt+"/retry", h.key, nil); code != 200 {
		t.Fatalf("manual retry = %d %v", code, out)
	}
	if n := h.eventCount(""); n != 7 {
		t.Fatalf("events listed = %d, want 7", n)
	}
	envOf := func(key string) string {
		_, sess := h.do("GET", "/v1/auth/session", key, nil)
		return sess["env_id"].(string)
	}
	envID, theirEnv := envOf(h.key), envOf(other)
	for _, bad := range []any{-1, 0.0001, 3651, "7"} {
		if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"history_retention_days": bad}); code != 400 {
			t.Errorf("history_retention_days %v = %d %v, want 400", bad, code, out)
		}
	}
	later := func() time.Time { return time.Now().Add(2 * time.Minute) }
	pass := func(now func() time.Time) map[string]retention.EnvReport {
		t.Helper()
		rep, err := retention.New(retention.Params{Pool: h.pool, Now: now, HistoryBatch: 2}).Run(ctx)
		if err != nil || !rep.Ran {
			t.Fatalf("retention pass = %+v %v", rep, err)
		}
		byEnv := map[string]retention.EnvReport{}
		for _, e := range rep.Envs {
			byEnv[e.EnvID] = e
		}
		return byEnv
	}
	// Before it is set, nothing is removed.
	if rep := pass(later)[envID]; rep.Webhooks != 0 || rep.HistoryRetentionSeconds != nil {
		t.Fatalf("pass without history retention = %+v", rep)
	}
	for key, env := range map[string]string{h.key: envID, other: theirEnv} {
		if code, out := h.do("PATCH", "/v1/environments/"+env, key, map[string]any{"history_retention_days": 0.0007}); code != 200 ||
			out["environment"].(map[string]any)["history_retention_days"] == nil {
			t.Fatalf("PATCH history retention = %d %v", code, out)
		}
	}
	// Payloads expire at the same age in this environment: the pass removes
	// what it can whole first, and expires only the payloads it keeps.
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"payload_retention_days": 0.0007}); code != 200 {
		t.Fatalf("PATCH payload retention = %d %v", code, out)
	}
	h.quietExcept(10*time.Second, 1)
	if n := len(h.dump("/v1/delivery-attempts", "delivery_attempts")); n != 9 {
		t.Fatalf("attempts listed = %d, want 9", n)
	}
	var deadDelivery string
	var issueLinks, deadRows int
	if err := h.pool.QueryRow(ctx, `SELECT a.delivery_id, (SELECT count(*) FROM issue_deliveries i WHERE i.delivery_id = a.delivery_id),
			(SELECT count(*) FROM events e WHERE e.stream_id IN (a.delivery_id, a.event_id))
		FROM delivery_attempts a WHERE a.event_id = $1 LIMIT 1`, dead).Scan(&deadDelivery, &issueLinks, &deadRows); err != nil || issueLinks != 1 || deadRows < 5 {
		t.Fatalf("the dead letter's issue links: %d, events %d (%v)", issueLinks, deadRows, err)
	}

	// A finished delivery keeps its job row a minute (the engine prunes
	// it then), and holds its webhook until then: here three webhooks'
	// rows are gone (as a minute on), three are not.
	if _, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs WHERE state = 'done' AND event_id = ANY($1)`, done[:3]); err != nil {
		t.Fatal(err)
	}
	reps := pass(later)
	// 3 webhooks, 3 deliveries; events: 3 × (received, requested,
	// attempted) + the manual retry's requested and attempted.
	if rep := reps[envID]; rep.Webhooks != 3 || rep.Deliveries != 3 || rep.LogRows != 11 || rep.WebhooksHeld != 4 || rep.OldestEventAt == nil {
		t.Fatalf("history pass = %+v", rep)
	}
	// The held webhooks' finished payloads expired; none of the removed
	// ones' was expired first (every payload the pass expired is still here).
	var expiredLeft int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE env_id = $1 AND payload ? 'payload_expired_at'`, envID).Scan(&expiredLeft); err != nil ||
		reps[envID].Events == 0 || reps[envID].Events+reps[envID].Attempts != expiredLeft {
		t.Fatalf("the pass expired %d payloads, %d left in the log (%v); want some, all left", reps[envID].Events+reps[envID].Attempts, expiredLeft, err)
	}
	// The other tenant's webhook had no connection (no delivery, no job
	// row): it goes at once, counted in its own environment.
	if rep := reps[theirEnv]; rep.Webhooks != 1 || rep.Deliveries != 0 || rep.LogRows != 1 || rep.WebhooksHeld != 0 {
		t.Fatalf("history pass in the other tenant's environment = %+v", rep)
	}
	if _, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs WHERE state = 'done'`); err != nil {
		t.Fatal(err)
	}
	reps = pass(later)
	if rep := reps[envID]; rep.Webhooks != 3 || rep.Deliveries != 3 || rep.LogRows != 6+deadRows || rep.WebhooksHeld != 1 {
		t.Fatalf("second history pass = %+v", rep)
	}
	if rep := reps[theirEnv]; rep.Webhooks != 0 || rep.WebhooksHeld != 0 {
		t.Fatalf("second history pass in the other tenant's environment = %+v", rep)
	}
	var left int
	// (The issue's own stream keeps its history: it names the dead letter.)
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE (stream_id = ANY($1) OR payload->>'event_id' = ANY($1))
		AND stream_type <> 'issue'`, append([]string{theirs, dead}, done...)).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d events of removed webhooks left in the log (%v)", left, err)
	}
	for _, table := range []string{"events_view WHERE id", "delivery_attempts WHERE event_id", "projected_deliveries WHERE event_id",
		"event_delivery_outcomes WHERE event_id"} {
		if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` = ANY($1)`, append([]string{dead}, done...)).Scan(&left); err != nil || left != 0 {
			t.Fatalf("%d rows of removed webhooks left in %s (%v)", left, table, err)
		}
	}
	for _, id := range done {
		if code, out := h.do("GET", "/v1/events/"+id, h.key, nil); code != 404 {
			t.Fatalf("removed event %s = %d %v", id, code, out)
		}
	}
	if code, out := h.do("GET", "/v1/events/"+theirs, other, nil); code != 404 {
		t.Fatalf("the other tenant's removed event = %d %v", code, out)
	}
	if code, out := h.do("POST", "/v1/delivery-attempts/"+doneAttempt+"/retry", h.key, nil); code != 404 {
		t.Fatalf("retry of a removed attempt = %d %v", code, out)
	}
	if n := h.eventCount(""); n != 1 {
		t.Fatalf("events listed after the pass = %d, want the live one", n)
	}
	if code, out := h.do("GET", "/v1/delivery-attempts", h.key, nil); code != 200 || num(out["pagination"].(map[string]any)["total"]) != 1 {
		t.Fatalf("attempts listed after the pass = %d %v", code, out["pagination"])
	}
	if code, out := h.do("GET", "/v1/events/"+live, h.key, nil); code != 200 || out["event"].(map[string]any)["payload"] == nil {
		t.Errorf("kept event %s = %d %v", live, code, out)
	}
	var recorded int
	if err := h.pool.QueryRow(ctx, `SELECT coalesce(sum((payload->>'webhooks')::int), 0) FROM events WHERE event_type = 'HistoryExpired' AND env_id = $1`,
		envID).Scan(&recorded); err != nil || recorded != 6 {
		t.Fatalf("HistoryExpired events count %d webhooks (%v), want 6", recorded, err)
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM issue_deliveries WHERE delivery_id = $1`, deadDelivery).Scan(&issueLinks); err != nil || issueLinks != 0 {
		t.Fatalf("the removed dead letter's issue links: %d (%v)", issueLinks, err)
	}

	// Only the pass deletes, and only in an environment that bounds its history.
	third := newKey(t, h.pool, "")
	code, out = h.do("POST", "/v1/sources", third, map[string]any{"name": "kept"})
	if code != 201 {
		t.Fatalf("third tenant's source = %d %v", code, out)
	}
	kept := h.ingest(out["source"].(map[string]any)["id"].(string), `{"kept":true}`)
	for _, q := range []string{
		`DELETE FROM events WHERE stream_id = '` + live + `'`,
		`BEGIN; SELECT set_config('hookstream.retention', 'on', true); DELETE FROM events WHERE stream_id = '` + live + `'; COMMIT`,
		`BEGIN; SELECT set_config('hookstream.retention', 'history', true); DELETE FROM events WHERE stream_id = '` + kept + `'; COMMIT`,
		`BEGIN; SELECT set_config('hookstream.retention', 'history', true); DELETE FROM events WHERE stream_type = 'environment' AND env_id = '` + envID + `'; COMMIT`,
		`BEGIN; SELECT set_config('hookstream.retention', 'history', true); UPDATE events SET metadata = '{}' WHERE stream_id = '` + live + `'; COMMIT`,
		`BEGIN; SELECT set_config('hookstream.retention', 'history', true); TRUNCATE events; COMMIT`,
	} {
		if _, err := h.pool.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "immutable") {
			t.Errorf("%s: %v, want refused", q, err)
		}
		_, _ = h.pool.Exec(ctx, `ROLLBACK`)
	}

	// Rebuilt read models equal the live ones.
	attemptsLive, eventsLive := h.dump("/v1/delivery-attempts", "delivery_attempts"), h.dump("/v1/events", "events")
	if len(attemptsLive) != 1 {
		t.Fatalf("attempts listed after the passes: %d", len(attemptsLive))
	}
	for _, name := range []string{"delivery_attempts", "events"} {
		if _, err := projections.Rebuild(ctx, h.pool, name, projections.RebuildOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	diff(t, "attempts after a rebuild", attemptsLive, h.dump("/v1/delivery-attempts", "delivery_attempts"))
	diff(t, "events after a rebuild", eventsLive, h.dump("/v1/events", "events"))
	if n := h.eventCount(""); n != 1 {
		t.Fatalf("events total after a rebuild = %d", n)
	}

	// The held webhook goes once its delivery finished.
	liveAttempt := h.attempts("event_id=" + live)[0]["id"].(string)
	failing.mu.Lock()
	failing.codes = nil
	failing.mu.Unlock()
	if code, out := h.do("POST", "/v1/delivery-attempts/"+liveAttempt+"/retry", h.key, nil); code != 200 ||
		out["delivery_attempt"].(map[string]any)["status"] != "success" {
		t.Fatalf("retry of the held delivery = %d %v", code, out)
	}
	h.quiet(10 * time.Second)
	if _, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs WHERE state = 'done'`); err != nil {
		t.Fatal(err)
	}
	if rep := pass(func() time.Time { return time.Now().Add(3 * time.Minute) })[envID]; rep.Webhooks != 1 || rep.Deliveries != 1 || rep.WebhooksHeld != 0 {
		t.Fatalf("pass after the held delivery finished = %+v", rep)
	}
	if n := h.eventCount(""); n != 0 {
		t.Fatalf("events listed at the end = %d", n)
	}
	st, err := retention.Status(ctx, h.pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.EnvID == envID && (s.WebhooksRemoved != 7 || s.DeliveriesRemoved != 7 || s.HistoryRetentionSeconds == nil || *s.HistoryRetentionSeconds != 60) {
			t.Errorf("status = %+v", s)
		}
	}
	// The third tenant (history kept forever) still has its webhook.
	if code, _ := h.do("GET", "/v1/events/"+kept, third, nil); code != 200 {
		t.Fatalf("the third tenant's event = %d", code)
	}
}

// quietExcept waits until every consumer group has caught up and at most
// scheduled jobs are left (deliveries waiting for a retry).
func (h *harness) quietExcept(timeout time.Duration, scheduled int) {
	h.t.Helper()
	waitFor(h.t, timeout, "the consumer groups to catch up", func() bool {
		var due int
		if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM delivery_jobs WHERE state = 'scheduled'`).Scan(&due); err != nil || due > scheduled {
			return false
		}
		st, err := projections.Status(context.Background(), h.pool, time.Now())
		if err != nil {
			h.t.Fatal(err)
		}
		for _, g := range st {
			if g.LagEvents > 0 {
				return false
			}
		}
		return true
	})
}

// A retry and a history pass of the same webhook, in both orders, through
// the retry endpoint itself. The retry that reads the webhook's row first
// commits first, and the pass then finds its delivery scheduled and keeps
// the webhook; a pass that locked the row first removes the webhook, and
// the retry waiting on the row then answers 400 (history expired). Each
// side is held at a chosen point by a row lock a test transaction takes.
func TestHistoryRetentionOrdersARetryAndAPass(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	ok := newSink(t)
	src, _ := h.route(ok.srv.URL, nil, nil)
	first, second := h.ingest(src, `{"n":1}`), h.ingest(src, `{"n":2}`)
	waitFor(t, 10*time.Second, "the deliveries", func() bool {
		return h.eventStatus(first) == "delivered" && h.eventStatus(second) == "delivered"
	})
	h.quiet(10 * time.Second)
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	envID := sess["env_id"].(string)
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"history_retention_days": 0.0007}); code != 200 {
		t.Fatalf("PATCH = %d %v", code, out)
	}
	if _, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs WHERE state = 'done'`); err != nil { // the engine's prune, a minute on
		t.Fatal(err)
	}
	later := func() time.Time { return time.Now().Add(2 * time.Minute) }
	type passResult struct {
		rep retention.EnvReport
		err error
	}
	runPass := func() chan passResult {
		done := make(chan passResult, 1)
		go func() {
			rep, err := retention.New(retention.Params{Pool: h.pool, Now: later}).Run(ctx)
			var mine retention.EnvReport
			for _, e := range rep.Envs {
				if e.EnvID == envID {
					mine = e
				}
			}
			done <- passResult{mine, err}
		}()
		return done
	}
	type retryResult struct {
		code int
		out  map[string]any
	}
	retry := func(attempt string) chan retryResult {
		done := make(chan retryResult, 1)
		go func() {
			req, _ := http.NewRequest("POST", h.api.URL+"/v1/delivery-attempts/"+attempt+"/retry?wait=false", nil)
			req.Header.Set("X-API-Key", h.key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- retryResult{code: -1, out: map[string]any{"error": err.Error()}}
				return
			}
			defer resp.Body.Close()
			var out map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&out)
			done <- retryResult{resp.StatusCode, out}
		}()
		return done
	}
	waiting := func(n int, what string) {
		waitFor(t, 10*time.Second, what, func() bool {
			var w int
			err := h.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&w)
			return err == nil && w >= n
		})
	}
	var (
		firstAttempt  = h.attempts("event_id=" + first)[0]
		secondAttempt = h.attempts("event_id=" + second)[0]
	)

	// 1. The retry first: held by a test transaction's insert of the
	// stream version its append takes, after it read the webhook's row.
	delivery := firstAttempt["delivery_id"].(string)
	blocker, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck // rolled back below
	if _, err := blocker.Exec(ctx, `INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, payload, org_id, env_id)
		SELECT gen_random_uuid(), 'delivery', $1, max(stream_version) + 1, 'TestBlocker', '{}', min(org_id), min(env_id) FROM events WHERE stream_id = $1`,
		delivery); err != nil {
		t.Fatal(err)
	}
	retried := retry(firstAttempt["id"].(string))
	waiting(1, "the retry to wait for the blocker")
	passed := runPass()
	waiting(2, "the pass to wait for the retry")
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if r := <-retried; r.code != 200 {
		t.Fatalf("retry = %d %v", r.code, r.out)
	}
	p := <-passed
	if p.err != nil || p.rep.Webhooks != 1 || p.rep.WebhooksHeld != 1 {
		t.Fatalf("pass = %+v %v, want the retried webhook held and the other removed", p.rep, p.err)
	}
	var n int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE stream_id = $1`, first).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the retried webhook's event: %d rows (%v)", n, err)
	}
	// The second webhook went in that pass; the read model showed it until
	// then. Its attempt is gone now: a retry is a 404.
	if code, out := h.do("POST", "/v1/delivery-attempts/"+secondAttempt["id"].(string)+"/retry", h.key, nil); code != 404 {
		t.Fatalf("retry of the removed webhook = %d %v", code, out)
	}

	// 2. The pass first: held by a test transaction's lock on the webhook's
	// events_view row (the pass deletes it last), after it locked and
	// deleted the webhook's events; the retry then waits on the row.
	waitFor(t, 10*time.Second, "the retry's delivery", func() bool { return ok.count() >= 3 })
	h.quiet(10 * time.Second)
	if _, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs WHERE state = 'done'`); err != nil {
		t.Fatal(err)
	}
	blocker, err = h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck // rolled back below
	if _, err := blocker.Exec(ctx, `SELECT 1 FROM events_view WHERE id = $1 FOR UPDATE`, first); err != nil {
		t.Fatal(err)
	}
	passed = runPass()
	waiting(1, "the pass to wait for the blocker")
	retried = retry(h.attempts("event_id=" + first)[0]["id"].(string))
	waiting(2, "the retry to wait for the pass")
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if p := <-passed; p.err != nil || p.rep.Webhooks != 1 {
		t.Fatalf("pass = %+v %v, want the webhook removed", p.rep, p.err)
	}
	if r := <-retried; r.code != 400 || !strings.Contains(fmt.Sprint(r.out["error"]), "history expired") {
		t.Fatalf("retry after the pass = %d %v, want 400 history expired", r.code, r.out)
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM delivery_jobs WHERE event_id = $1 AND state = 'scheduled'`, first).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d deliveries of the removed webhook scheduled (%v)", n, err)
	}
}

// Payloads held past their cutoff are re-checked from where the last pass
// stopped, wrapping around: a backlog held for long (here five webhooks of
// a destination that keeps failing, more than a pass re-checks) does not
// keep a webhook that finished meanwhile past its retention.
func TestRetentionReChecksEveryHeldPayload(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	retries := map[string]any{"retry_intervals": []int{3600}, "retry_backoff_type": "fixed", "circuit_breaker_enabled": false}
	srcStuck, _ := h.route(newSink(t, 500, 500, 500, 500, 500, 500, 500, 500).srv.URL, retries, nil)
	srcLater, _ := h.route(newSink(t, 500).srv.URL, retries, nil)
	var stuck []string
	for i := 0; i < 5; i++ {
		stuck = append(stuck, h.ingest(srcStuck, fmt.Sprintf(`{"stuck":%d}`, i)))
	}
	later := h.ingest(srcLater, `{"finishes":"later"}`)
	waitFor(t, 10*time.Second, "every first attempt failed", func() bool {
		for _, id := range append([]string{later}, stuck...) {
			if a := h.attempts("event_id=" + id); len(a) != 1 || a[0]["status"] != "failed" {
				return false
			}
		}
		return true
	})
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	envID := sess["env_id"].(string)
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key, map[string]any{"payload_retention_days": 0.0007}); code != 200 {
		t.Fatalf("PATCH = %d %v", code, out)
	}
	pass := func(ahead time.Duration) {
		t.Helper()
		// Batch 1: a pass re-checks at most 5 held payloads.
		if _, err := retention.New(retention.Params{Pool: h.pool, Now: func() time.Time { return time.Now().Add(ahead) }, Batch: 1}).Run(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pass(2 * time.Minute)
	var held int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM retention_held WHERE env_id = $1`, envID).Scan(&held); err != nil || held != 12 {
		t.Fatalf("%d payloads held (%v), want the 6 webhooks and their 6 attempts", held, err)
	}
	if code, out := h.do("POST", "/v1/delivery-attempts/"+h.attempts("event_id=" + later)[0]["id"].(string)+"/retry", h.key, nil); code != 200 ||
		out["delivery_attempt"].(map[string]any)["status"] != "success" {
		t.Fatalf("retry = %d %v", code, out)
	}
	expired := func(id string) bool {
		var x bool
		if err := h.pool.QueryRow(ctx, `SELECT payload ? 'payload_expired_at' FROM events WHERE stream_id = $1 AND stream_version = 1`, id).Scan(&x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	passes := 0
	for ; passes < 4 && !expired(later); passes++ {
		pass(3 * time.Minute)
	}
	if !expired(later) {
		t.Fatalf("the finished webhook's payload is still kept after %d passes", passes)
	}
	for _, id := range stuck {
		if expired(id) {
			t.Fatalf("a live delivery's payload %s expired", id)
		}
	}
}

// With a history retention longer than the payloads', a pass expires
// payloads before it removes history (they are due first, and a history
// backlog must not hold them past their retention); with one no longer,
// history goes first and removes the webhook whole, its payloads untouched
// (TestHistoryRetentionRemovesFinishedWebhooksWhole).
func TestRetentionExpiresPayloadsFirstWhenHistoryIsLonger(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	ok := newSink(t)
	src, _ := h.route(ok.srv.URL, nil, nil)
	id := h.ingest(src, `{"order":"payloads first"}`)
	waitFor(t, 10*time.Second, "the delivery", func() bool { return h.eventStatus(id) == "delivered" })
	_, sess := h.do("GET", "/v1/auth/session", h.key, nil)
	envID := sess["env_id"].(string)
	if code, out := h.do("PATCH", "/v1/environments/"+envID, h.key,
		map[string]any{"payload_retention_days": 0.0007, "history_retention_days": 0.0014}); code != 200 {
		t.Fatalf("PATCH retention = %d %v", code, out)
	}
	h.quiet(10 * time.Second)
	if _, err := h.pool.Exec(ctx, `DELETE FROM delivery_jobs WHERE state = 'done'`); err != nil { // as a minute on
		t.Fatal(err)
	}
	// Both cutoffs (60 s and 121 s) are past the webhook.
	rep, err := retention.New(retention.Params{Pool: h.pool, Now: func() time.Time { return time.Now().Add(3 * time.Minute) }}).Run(ctx)
	if err != nil || !rep.Ran || len(rep.Envs) == 0 {
		t.Fatalf("retention pass = %+v %v", rep, err)
	}
	for _, e := range rep.Envs {
		if e.EnvID != envID {
			continue
		}
		if e.Events != 1 || e.Attempts != 1 || e.Webhooks != 1 {
			t.Fatalf("pass = %+v; want the payloads expired (1 event, 1 attempt), then the webhook removed", e)
		}
		return
	}
	t.Fatalf("no report for environment %s: %+v", envID, rep)
}
