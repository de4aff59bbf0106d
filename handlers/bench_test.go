package handlers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
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
// senders into a running engine and waits until a local sink has received
// every one. Run it with a fixed count, e.g. -benchtime=20000x.
func BenchmarkEndToEnd(b *testing.B) {
	pool := pgtest.NewPool(b)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool})
	defer svc.Close()
	api := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool}))
	defer api.Close()
	engine := handlers.NewEngine(handlers.EngineParams{Pool: pool, Outbound: handlers.OutboundPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- engine.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var mu sync.Mutex
	sent := map[string]time.Time{}
	var lat []time.Duration
	var received atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-hookstream-Event-Id")
		now := time.Now()
		mu.Lock()
		if t0, ok := sent[id]; ok {
			lat = append(lat, now.Sub(t0))
		}
		mu.Unlock()
		received.Add(1)
	}))
	defer sink.Close()
	t := &testing.T{}
	h := &harness{t: t, pool: pool, api: api, key: newKeyB(b, pool)}
	src, _ := h.route(sink.URL, nil, nil)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
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
	for received.Load() < int64(b.N) {
		time.Sleep(5 * time.Millisecond)
	}
	total := time.Since(start)
	b.StopTimer()
	mu.Lock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50_ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99_ms")
	}
	mu.Unlock()
	b.ReportMetric(float64(b.N)/ingestDur.Seconds(), "ingest/s")
	b.ReportMetric(float64(b.N)/total.Seconds(), "deliveries/s")
}
