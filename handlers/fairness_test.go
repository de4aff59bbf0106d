package handlers_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
)

// One tenant's hanging destinations hold at most its share of the lanes:
// tenant A routes to 40 destinations that never answer, and tenant B's
// webhooks still go out at once. Before per-tenant bounds, A's 40 batches
// took all 16 lanes and B waited for A's timeouts (60 s here).
func TestOneTenantsHangingDestinationsLeaveLanesForOthers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.stopEngine()
	engine := handlers.NewEngine(handlers.EngineParams{Pool: h.pool, Lanes: 16, LeaseTTL: time.Second, Poll: 50 * time.Millisecond,
		ShutdownGrace: time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Outbound: loopbackOnly, Secrets: testKeyring})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- engine.Run(ctx) }()

	release := make(chan struct{})
	var hanging atomic.Int32
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hanging.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	// Cleanups run last first: stop the engine, release the hanging
	// requests, then close the server.
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })
	t.Cleanup(func() { cancel(); <-done })

	for i := 0; i < 40; i++ {
		src, _ := h.route(fmt.Sprintf("%s/%d", hang.URL, i), map[string]any{"timeout_ms": 60000}, nil)
		h.ingest(src, `{"tenant":"A"}`)
	}
	waitFor(t, 20*time.Second, "tenant A's requests hanging", func() bool { return hanging.Load() >= 12 })

	h.key = newKey(t, h.pool, "") // tenant B, in an organization of its own
	ok := newSink(t)
	src, _ := h.route(ok.srv.URL, nil, nil)
	var slowest time.Duration
	for i := 1; i <= 5; i++ {
		start := time.Now()
		h.ingest(src, `{"tenant":"B"}`)
		waitFor(t, 5*time.Second, fmt.Sprintf("tenant B's webhook %d delivered beside A's hanging ones", i), func() bool { return ok.count() >= i })
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("tenant B's slowest webhook reached its destination %s after ingest, beside tenant A's hanging ones", slowest.Round(time.Millisecond))
	if n := hanging.Load(); n > 12 {
		t.Errorf("tenant A holds %d requests on 16 lanes, want at most its share (12)", n)
	}
}
