package eventstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/benchdata"
	"github.com/hookstream/hookstream/internal/pgtest"
)

var benchPayload = map[string]any{"type": "order.created", "id": "ord_123", "amount": 4200, "currency": "eur"}

// BenchmarkAppend measures appends with 16 parallel writers, one event per
// transaction (each op is one event) and 50 events per statement.
func BenchmarkAppend(b *testing.B) {
	for _, batch := range []int{1, 50} {
		b.Run(fmt.Sprintf("events_per_tx=%d/writers=16", batch), func(b *testing.B) {
			ctx := context.Background()
			pool := pgtest.NewPool(b)
			s := eventstore.New(nil)
			var stream atomic.Int64
			b.SetParallelism(8) // 8 × GOMAXPROCS(2) = 16 writers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					evs := make([]eventstore.NewEvent, batch)
					for i := range evs {
						evs[i] = ev("OrderCreated", benchPayload)
					}
					id := fmt.Sprintf("s-%d", stream.Add(1))
					if _, err := s.Append(ctx, pool, appendTo(id, eventstore.NoStream, evs...)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkConsumerGroupRead measures how fast one consumer group reads
// events already in the table (no-op handler, acked one by one).
func BenchmarkConsumerGroupRead(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			pool := pgtest.NewPool(b)
			s := eventstore.New(nil)
			for written := 0; written < b.N; {
				n := min(500, b.N-written)
				evs := make([]eventstore.NewEvent, n)
				for i := range evs {
					evs[i] = ev("OrderCreated", benchPayload)
				}
				if _, err := s.Append(ctx, pool, appendTo(fmt.Sprintf("r-%d", written), eventstore.NoStream, evs...)); err != nil {
					b.Fatal(err)
				}
				written += n
			}
			sub, err := eventstore.NewSubscriber(pool, eventstore.SubscriberParams{ConsumerGroup: "bench", BatchSize: batch, PollInterval: time.Millisecond}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			b.ResetTimer()
			msgs, err := sub.Subscribe(ctx, eventstore.Topic)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				m := <-msgs
				m.Ack()
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkExport writes the whole log of 60,000 webhooks (207,000
// events) as NDJSON; one op is one full export.
func BenchmarkExport(b *testing.B) {
	ctx := context.Background()
	pool := pgtest.NewPool(b)
	total, err := benchdata.Generate(ctx, pool, 60_000)
	if err != nil {
		b.Fatal(err)
	}
	var bytes countingWriter
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, err := eventstore.Export(ctx, pool, time.Unix(0, 0), time.Now().Add(time.Hour), nil, &bytes)
		if err != nil || n != total {
			b.Fatalf("exported %d of %d: %v", n, total, err)
		}
	}
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(bytes)/b.Elapsed().Seconds()/(1<<20), "MiB/s")
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
