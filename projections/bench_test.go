package projections_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hookstream/hookstream/internal/benchdata"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/projections"
)

// BenchmarkRebuild rebuilds each read model from a log of 60,000 webhooks
// (207,000 events); one op is one full rebuild, and events/s counts
// the events of the model's types read per second of the whole rebuild.
func BenchmarkRebuild(b *testing.B) {
	ctx := context.Background()
	pool := pgtest.NewPool(b)
	total, err := benchdata.Generate(ctx, pool, 60_000)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.Fatal(err)
	}
	b.Logf("log: %d events", total)
	for _, c := range []struct {
		name string
		opt  projections.RebuildOptions
	}{
		{"delivery_attempts", projections.RebuildOptions{}},
		{"events", projections.RebuildOptions{}},
		{"scheduler", projections.RebuildOptions{}},
		{"delivery_attempts_event_at_a_time", projections.RebuildOptions{EventAtATime: true}},
	} {
		name := c.name
		if c.opt.EventAtATime {
			name = "delivery_attempts"
		}
		b.Run(c.name, func(b *testing.B) {
			var events int64
			var seconds float64
			for i := 0; i < b.N; i++ {
				opt := c.opt
				started, phase, phases := time.Now(), "", ""
				opt.Progress = func(p projections.Progress) {
					if p.Phase != phase {
						phases += fmt.Sprintf(" %s@%dms", p.Phase, time.Since(started).Milliseconds())
						phase = p.Phase
					}
				}
				res, err := projections.Rebuild(ctx, pool, name, opt)
				b.Logf("phases:%s end@%dms", phases, time.Since(started).Milliseconds())
				if err != nil {
					b.Fatal(err)
				}
				events += res.Events
				seconds += res.Duration.Seconds()
			}
			b.ReportMetric(float64(events)/seconds, "events/s")
			b.ReportMetric(float64(total)/(seconds/float64(b.N)), "log_events/s")
		})
	}
}
