package handlers_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
)

// A request that outlasts the lease keeps its job: the worker's heartbeat
// extends a short lease (1 s here) while the request runs, and a second
// worker on the same database never sends it again. Before heartbeats a
// lease was the destination's whole timeout plus a margin, taken at claim
// time, so a crashed worker's jobs waited for all of it.
func TestHeartbeatKeepsTheLeaseOfALongRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t) // one worker, LeaseTTL 1 s
	second := handlers.NewEngine(handlers.EngineParams{Pool: h.pool, LeaseTTL: time.Second, Poll: 50 * time.Millisecond, ShutdownGrace: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Outbound: loopbackOnly, Secrets: testKeyring})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- second.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	const hold, webhooks = 3500 * time.Millisecond, 3
	var mu sync.Mutex
	sent := map[string]int{} // idempotency key -> requests
	longRunning := make(chan struct{}, webhooks)
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sent[r.Header.Get("Idempotency-Key")]++
		mu.Unlock()
		// The destination is slow: past 2.5 leases, say so, then answer.
		time.Sleep(2500 * time.Millisecond)
		select {
		case longRunning <- struct{}{}:
		default: // a request sent again (the failure this test looks for) must not block
		}
		time.Sleep(hold - 2500*time.Millisecond)
	}))
	t.Cleanup(dest.Close)
	src, _ := h.route(dest.URL, map[string]any{"timeout_ms": 10000}, nil)
	for i := 0; i < webhooks; i++ {
		h.ingest(src, `{"slow":true}`)
	}
	select {
	case <-longRunning:
	case <-time.After(30 * time.Second):
		t.Fatal("no request reached the destination")
	}
	// 2.5 s into the request: its lease is still held, and short.
	rows, err := h.pool.Query(context.Background(), `SELECT extract(epoch FROM lease_until - now())::float8 FROM delivery_jobs
		WHERE state = 'scheduled' AND leased_by IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	leases := 0
	for rows.Next() {
		var left float64
		if err := rows.Scan(&left); err != nil {
			t.Fatal(err)
		}
		leases++
		if left <= 0 || left > 1.5 {
			t.Errorf("a job in flight for 2.5 s has %.2f s of lease left, want a 1 s lease kept alive by heartbeats", left)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if leases == 0 {
		t.Fatal("no job in flight holds a lease")
	}
	waitFor(t, 30*time.Second, "every webhook delivered", func() bool {
		return len(h.attempts("status=success")) == webhooks
	})
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != webhooks {
		t.Fatalf("%d idempotency keys reached the destination, want %d", len(sent), webhooks)
	}
	for key, n := range sent {
		if n != 1 {
			t.Errorf("delivery %s was sent %d times by live workers, want once", key, n)
		}
	}
}
