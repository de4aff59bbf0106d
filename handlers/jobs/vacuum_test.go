package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// Vacuum runs once the job table holds enough dead rows, and not before.
func TestVacuumRunsWhenJobsLeaveDeadRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	if _, err := pool.Exec(ctx, `INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_number, trigger_type, due_at, version)
		SELECT 'd' || g, 'o', 'e', 'ev', 'c', 'dst', gen_random_uuid(), 'scheduled', 1, 'initial', now(), 1 FROM generate_series(1, 300) g`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // each rewrite leaves 300 dead rows
		if _, err := pool.Exec(ctx, `UPDATE delivery_jobs SET version = version + 1, state = 'done'`); err != nil {
			t.Fatal(err)
		}
	}
	if ran, err := (jobs.Vacuum{Pool: pool, MinDead: 1 << 40}).Once(ctx); err != nil || ran {
		t.Fatalf("vacuum below its threshold: ran %v, err %v", ran, err)
	}
	// The statistics reach pg_stat_user_tables asynchronously.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ran, err := (jobs.Vacuum{Pool: pool, MinDead: 500}).Once(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ran {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("900 dead rows never triggered a vacuum")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
