package jobs_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// BenchmarkClaimWithHeldBacklog times one claim of 16 due jobs of an active
// destination, beside a paused destination holding 0 or 100,000 due jobs:
// the claim walks destinations (one index seek each), not held jobs, so the
// backlog should not change it. It reports PostgreSQL's execution time of
// the claim (EXPLAIN ANALYZE), apart from round trips; each claim is rolled
// back.
func BenchmarkClaimWithHeldBacklog(b *testing.B) {
	for _, held := range []int{0, 100000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			ctx := context.Background()
			pool := heldBacklog(b, held)
			now := time.Now().UTC()
			var serverMS float64
			b.ResetTimer()
			for b.Loop() {
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				// The server's execution time, from EXPLAIN ANALYZE of the claim.
				rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+jobs.ClaimSQL, now, 64, []string{}, []int32{}, 32, nil,
					uuid.NewString(), time.Minute, "", []string{})
				if err != nil {
					b.Fatal(err)
				}
				for rows.Next() {
					var plan []struct {
						Execution float64 `json:"Execution Time"`
					}
					if err := rows.Scan(&plan); err != nil {
						b.Fatal(err)
					}
					if len(plan) == 1 {
						serverMS += plan[0].Execution
					}
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					b.Fatal(err)
				}
				_ = tx.Rollback(ctx)
			}
			b.ReportMetric(serverMS/float64(b.N), "server_ms/claim")
		})
	}
}

// heldBacklog is a database where destination dactive (connection ca) has 16
// due jobs and dpaused, paused, holds held due jobs (connection cp).
func heldBacklog(b *testing.B, held int) *pgxpool.Pool {
	ctx := context.Background()
	pool := pgtest.NewPool(b)
	setup := []string{
		`INSERT INTO destinations (id, org_id, env_id, name, slug, url, status, created_at, updated_at) VALUES
			('dactive', 'o', 'e', 'active', 'active', 'http://127.0.0.1:1/', 'active', now(), now()),
			('dpaused', 'o', 'e', 'paused', 'paused', 'http://127.0.0.1:1/', 'paused', now(), now())`,
		`INSERT INTO sources (id, org_id, env_id, name, slug, status, created_at, updated_at) VALUES ('s', 'o', 'e', 's', 's', 'active', now(), now())`,
		`INSERT INTO connections (id, org_id, env_id, source_id, destination_id, name, created_at, updated_at)
			VALUES ('ca', 'o', 'e', 's', 'dactive', 'a', now(), now()), ('cp', 'o', 'e', 's', 'dpaused', 'p', now(), now())`,
		fmt.Sprintf(`INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version)
			SELECT 'held' || g, 'o', 'e', 'ev', 'cp', 'dpaused', gen_random_uuid(), 'scheduled', 'a' || g, 1, 'initial',
				now() - interval '1 hour', 1 FROM generate_series(1, %d) g`, held),
		`INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version)
			SELECT 'due' || g, 'o', 'e', 'ev', 'ca', 'dactive', gen_random_uuid(), 'scheduled', 'b' || g, 1, 'initial',
				now() - interval '1 minute', 1 FROM generate_series(1, 16) g`,
		`ANALYZE delivery_jobs`,
	}
	for _, q := range setup {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	return pool
}

// BenchmarkHandoffInsertWithHeldBacklog times the ingest's hand-off insert
// of one webhook for a third destination, with nothing waiting, beside the
// paused destination holding 0 or 100,000 due jobs: take's checks probe the
// new job's own destination, so the backlog should not change it. Each
// insert runs in its own transaction with the ingest's generic plan, rolled
// back; the time is the client's, round trip included.
func BenchmarkHandoffInsertWithHeldBacklog(b *testing.B) {
	for _, held := range []int{0, 100000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			ctx := context.Background()
			pool := heldBacklog(b, held)
			if _, err := pool.Exec(ctx, `INSERT INTO destinations (id, org_id, env_id, name, slug, url, status, created_at, updated_at)
					VALUES ('dnew', 'o', 'e', 'new', 'new', 'http://127.0.0.1:1/', 'active', now(), now());
				INSERT INTO connections (id, org_id, env_id, source_id, destination_id, name, created_at, updated_at)
					VALUES ('cn', 'o', 'e', 's', 'dnew', 'n', now(), now())`); err != nil {
				b.Fatal(err)
			}
			sent := &jobs.Sent{BodyB64: "e30=", ContentType: "application/json"}
			b.ResetTimer()
			for b.Loop() {
				now := time.Now().UTC()
				job := jobs.NewJob{DeliveryID: uuid.NewString(), OrgID: "o", EnvID: "e", EventID: "ev", ConnectionID: "cn",
					DestinationID: "dnew", ReceivedUUID: uuid.NewString(), AttemptID: uuid.NewString(), Trigger: "initial", Due: now, Sent: sent}
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if n := handOff(ctx, b, tx, job, now); n != 1 {
					b.Fatalf("hand-off: %d rows", n)
				}
				_ = tx.Rollback(ctx)
			}
		})
	}
}
