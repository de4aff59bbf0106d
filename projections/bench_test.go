package projections_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
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

// BenchmarkEventList reads the events list of a log of
// HOOKSTREAM_BENCH_EVENTS webhooks (default 100,000; the README's figures
// use 1,000,000) with ~600-byte bodies: the first page, a page 90% deep by
// offset and by cursor, and searches: a body match found at once, one
// rare enough that a request reads its whole bound (SearchScan events),
// and a full event id. One op is one request of 50 rows.
func BenchmarkEventList(b *testing.B) {
	ctx := context.Background()
	n := benchSize(b, "HOOKSTREAM_BENCH_EVENTS", 100_000)
	pool := pgtest.NewPool(b)
	started := time.Now()
	if _, err := benchdata.GenerateWith(ctx, pool, n, benchdata.Options{EventsOnly: true, BodyBytes: 600}); err != nil {
		b.Fatal(err)
	}
	if _, err := projections.Rebuild(ctx, pool, "events", projections.RebuildOptions{}); err != nil {
		b.Fatal(err)
	}
	vacuumAnalyze(b, pool, "events", "events_view")
	b.Logf("%d events generated and projected in %s", n, time.Since(started).Round(time.Second))
	reads := projections.NewReads(pool)
	tenant := domain.Tenant{OrgID: "org_bench", EnvID: "env_bench"}
	deep := n * 9 / 10
	var at projections.Cursor
	if err := pool.QueryRow(ctx, `SELECT received_at, id FROM events_view ORDER BY received_at DESC, id DESC OFFSET $1 LIMIT 1`, deep).Scan(&at.At, &at.ID); err != nil {
		b.Fatal(err)
	}
	oldID := fmt.Sprintf("%032x", n/10)
	for _, c := range []struct {
		name string
		f    projections.EventFilter
		want int
	}{
		{"first_page", projections.EventFilter{Limit: 50}, 50},
		{"offset_90pct", projections.EventFilter{Limit: 50, Offset: deep}, 50},
		{"cursor_90pct", projections.EventFilter{Limit: 50, Cursor: &at}, 50},
		{"search_body_frequent", projections.EventFilter{Limit: 50, Search: "order.created"}, 50},
		{"search_body_rare_bound", projections.EventFilter{Limit: 50, Search: fmt.Sprintf("cus_%07d", n/2)}, 0},
		{"search_full_id_old", projections.EventFilter{Limit: 50, Search: oldID}, 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				out, _, err := reads.ListEvents(ctx, tenant, c.f)
				if err != nil {
					b.Fatal(err)
				}
				if len(out) != c.want {
					b.Fatalf("%d rows, want %d", len(out), c.want)
				}
			}
		})
	}
}

// BenchmarkAttemptList reads the delivery-attempts list of a log of
// HOOKSTREAM_BENCH_WEBHOOKS webhooks (default 20,000; about 1.2 attempts
// each): the first page, one destination's first page, a page 90% deep by
// cursor and by offset, and one attempt. One op is one request of 100 rows
// (one row for get). Each attempt's headers and body are read from its
// DeliveryAttempted (migration 0024), so this is what that look-up costs a
// reader.
func BenchmarkAttemptList(b *testing.B) {
	ctx := context.Background()
	n := benchSize(b, "HOOKSTREAM_BENCH_WEBHOOKS", 20_000)
	pool := pgtest.NewPool(b)
	if _, err := benchdata.Generate(ctx, pool, n); err != nil {
		b.Fatal(err)
	}
	if _, err := projections.Rebuild(ctx, pool, "delivery_attempts", projections.RebuildOptions{}); err != nil {
		b.Fatal(err)
	}
	vacuumAnalyze(b, pool, "events", "delivery_attempts")
	reads := projections.NewReads(pool)
	tenant := domain.Tenant{OrgID: "org_bench", EnvID: "env_bench"}
	var at projections.Cursor
	if err := pool.QueryRow(ctx, `SELECT created_at, id FROM delivery_attempts ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1`, n*9/10).
		Scan(&at.At, &at.ID); err != nil {
		b.Fatal(err)
	}
	one := at.ID
	for _, c := range []struct {
		name string
		f    projections.AttemptFilter
	}{
		{"first_page", projections.AttemptFilter{Limit: 100}},
		{"destination_first_page", projections.AttemptFilter{Limit: 100, DestinationID: "dst_bench_3"}},
		{"cursor_90pct", projections.AttemptFilter{Limit: 100, Cursor: &at}},
		{"offset_90pct", projections.AttemptFilter{Limit: 100, Offset: n * 9 / 10}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				out, _, err := reads.ListAttempts(ctx, tenant, c.f)
				if err != nil {
					b.Fatal(err)
				}
				if len(out) != 100 || out[0].RequestHeaders == nil || out[0].ResponseBody == nil {
					b.Fatalf("%d rows, first %+v", len(out), out[0])
				}
			}
		})
	}
	b.Run("get", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			a, err := reads.GetAttempt(ctx, tenant, one)
			if err != nil || a.RequestHeaders == nil {
				b.Fatal(a, err)
			}
		}
	})
}

// benchSize is the log size a benchmark generates: the environment
// variable env when set, else def.
func benchSize(b *testing.B, env string, def int) int {
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		b.Fatalf("%s: %v", env, err)
	}
	return n
}

// vacuumAnalyze vacuums and analyzes tables, as a live installation's
// autovacuum would have, before a benchmark reads them.
func vacuumAnalyze(b *testing.B, pool *pgxpool.Pool, tables ...string) {
	for _, table := range tables {
		if _, err := pool.Exec(context.Background(), `VACUUM ANALYZE `+table); err != nil {
			b.Fatal(err)
		}
	}
}
