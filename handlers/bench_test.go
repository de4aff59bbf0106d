package handlers_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// BenchmarkEndToEnd ingests b.N webhooks over HTTP from 32 concurrent
// senders into a running engine and waits until a local sink has accepted
// every one. Latency is from the ingest request to the sink's 2xx answer.
// Run with a fixed count: make bench PKG=./handlers/ BENCHTIME=10000x.
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("saturated", func(b *testing.B) { runEndToEnd(b, false, 0) })
	b.Run("first_attempt_fails", func(b *testing.B) { runEndToEnd(b, true, 0) })
	b.Run("offered_1000_per_s", func(b *testing.B) { runEndToEnd(b, false, 1000) })
}

// runEndToEnd: with firstFails the sink answers 500 to each event's first
// request (the retry comes at once, interval 0); with rate > 0 the senders
// together offer that many webhooks per second instead of as many as they can.
func runEndToEnd(b *testing.B, firstFails bool, rate int) {
	pool := pgtest.NewPool(b)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, Outbound: loopbackOnly, Secrets: testKeyring})
	defer svc.Close()
	// Production logging (a JSON line per request and per attempt), written nowhere.
	logs := slog.New(slog.NewJSONHandler(io.Discard, nil))
	metrics := handlers.NewMetrics(pool, logs)
	api := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool, Log: logs, Metrics: metrics, MetricsOnAPI: true}))
	defer api.Close()
	engine := handlers.NewEngine(handlers.EngineParams{Pool: pool, Log: logs, Metrics: metrics, Outbound: loopbackOnly, Secrets: testKeyring})
	svc.HandOff(engine)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- engine.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var mu sync.Mutex
	sent := map[string]time.Time{}
	seen := map[string]bool{}
	var lat []time.Duration
	var delivered atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-hookstream-Event-Id")
		now := time.Now()
		mu.Lock()
		first := !seen[id]
		seen[id] = true
		if firstFails && first {
			mu.Unlock()
			w.WriteHeader(500)
			return
		}
		if t0, ok := sent[id]; ok {
			lat = append(lat, now.Sub(t0))
		}
		mu.Unlock()
		delivered.Add(1)
	}))
	defer sink.Close()
	h := &harness{t: &testing.T{}, pool: pool, api: api, key: newKeyB(b, pool)}
	src, _ := h.route(sink.URL, map[string]any{"retry_intervals": []int{0}, "circuit_breaker_enabled": false}, nil)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if rate > 0 { // webhook i is due at start + i/rate
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
				}
				t0 := time.Now()
				resp, err := client.Post(api.URL+"/v1/ingest/"+src, "application/json", strings.NewReader(`{"type":"order.created","amount":4200}`))
				if err != nil {
					b.Error(err)
					return
				}
				var out struct {
					EventID string `json:"event_id"`
				}
				decodeBody(resp, &out)
				mu.Lock()
				sent[out.EventID] = t0
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	ingestDur := time.Since(start)
	for delivered.Load() < int64(b.N) {
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("only %d of %d delivered after 5 minutes", delivered.Load(), b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	total := time.Since(start)
	b.StopTimer()
	mu.Lock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
	}
	mu.Unlock()
	b.ReportMetric(float64(b.N)/ingestDur.Seconds(), "ingest/s")
	b.ReportMetric(float64(b.N)/total.Seconds(), "deliveries/s")
}
