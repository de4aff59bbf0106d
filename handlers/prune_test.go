package handlers_test

import (
	"context"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers/delivery"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/upkeep"
)

// Finished jobs are pruned a minute after they finish, and a finished
// delivery stays retryable: the manual retry of a dead letter whose job
// row is gone writes it again and delivers, and an event's retry still
// finds its deliveries. A replay job goes a day after it was requested.
func TestFinishedJobsAndOldReplaysArePruned(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	ok, dead := newSink(t), newSink(t, 500, 500)
	src, _ := h.route(ok.srv.URL, nil, nil)
	deadSrc, _ := h.route(dead.srv.URL, map[string]any{"retry_intervals": []int{0}, "retry_backoff_type": "fixed", "retry_max_attempts": 1,
		"circuit_breaker_enabled": false}, nil)
	delivered := h.ingest(src, `{"n":1}`)
	failed := h.ingest(deadSrc, `{"n":2}`)
	waitFor(t, 10*time.Second, "a delivery and a dead letter", func() bool {
		return ok.count() == 1 && len(h.attempts("event_id="+failed+"&is_dlq=1")) == 1 && h.eventStatus(delivered) == "delivered"
	})
	prune := upkeep.Upkeep{Pool: h.pool, Prune: []string{jobs.PruneDoneSQL, delivery.PruneReplaysSQL}}
	did, err := prune.Once(ctx)
	if err != nil || did.Pruned != 0 {
		t.Fatalf("a prune within the minute deleted %d rows (%v)", did.Pruned, err)
	}
	if _, err := h.pool.Exec(ctx, `UPDATE delivery_jobs SET due_at = due_at - interval '2 minutes' WHERE state = 'done'`); err != nil {
		t.Fatal(err)
	}
	// (The engine's own upkeep may prune them first.)
	if did, err = prune.Once(ctx); err != nil || did.Pruned > 2 {
		t.Fatalf("prune deleted %d rows (%v), want the 2 finished jobs at most", did.Pruned, err)
	}
	var left int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM delivery_jobs`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d job rows left (%v)", left, err)
	}
	// The dead letter is retried by the event's retry, and by its attempt's.
	code, out := h.do("POST", "/v1/events/"+failed+"/retry", h.key, nil)
	if code != 200 || len(out["retried"].([]any)) != 1 {
		t.Fatalf("event retry after the prune = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "the event's retry attempted", func() bool { return dead.count() == 3 })
	a := h.attempts("event_id=" + delivered)[0]
	code, out = h.do("POST", "/v1/delivery-attempts/"+a["id"].(string)+"/retry", h.key, nil)
	if code != 200 || out["delivery_attempt"].(map[string]any)["status"] != "success" || ok.count() != 2 {
		t.Fatalf("retry of a pruned delivery = %d %v (sink %d)", code, out, ok.count())
	}

	// Replays: gone a day after, once they released everything.
	rs := newSink(t)
	d := h.mustCreate("/v1/destinations", map[string]any{"name": "replay-target", "url": rs.srv.URL})
	code, out = h.do("POST", "/v1/replay", h.key, map[string]any{"destination_id": d["id"], "source_id": src,
		"from": time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "to": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	if code != 201 {
		t.Fatalf("replay = %d %v", code, out)
	}
	id := out["job"].(map[string]any)["id"].(string)
	waitFor(t, 10*time.Second, "the replay completed", func() bool { return h.replayJob(id)["status"] == "completed" })
	if _, err := prune.Once(ctx); err != nil {
		t.Fatal(err)
	}
	if code, _ := h.do("GET", "/v1/replay/"+id, h.key, nil); code != 200 {
		t.Fatalf("a fresh replay was pruned: %d", code)
	}
	if _, err := h.pool.Exec(ctx, `UPDATE replay_jobs SET created_at = created_at - interval '25 hours' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := prune.Once(ctx); err != nil {
		t.Fatal(err)
	}
	if code, _ := h.do("GET", "/v1/replay/"+id, h.key, nil); code != 404 {
		t.Fatalf("a replay requested 25 h ago = %d, want 404", code)
	}
}
