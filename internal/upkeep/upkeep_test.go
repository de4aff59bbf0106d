package upkeep_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/internal/upkeep"
)

// waitDid runs rounds until one did what want says (the statistics reach
// pg_stat_user_tables asynchronously), and fails after 20 s.
func waitDid(t *testing.T, u upkeep.Upkeep, want func(upkeep.Did) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		did, err := u.Once(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if want(did) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no round did what was due; the last did %+v", did)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A table is vacuumed once it holds enough dead rows, and not before.
func TestUpkeepVacuumsPastTheDeadRowThreshold(t *testing.T) {
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
	if did, err := (upkeep.Upkeep{Pool: pool, Vacuum: map[string]int64{"delivery_jobs": 1 << 40}}).Once(ctx); err != nil || len(did.Vacuumed) > 0 {
		t.Fatalf("vacuum below its threshold: %+v, err %v", did, err)
	}
	waitDid(t, upkeep.Upkeep{Pool: pool, Vacuum: map[string]int64{"delivery_jobs": 500}}, func(d upkeep.Did) bool {
		return slices.Equal(d.Vacuumed, []string{"delivery_jobs"})
	})
	var dead int64
	if err := pool.QueryRow(ctx, `SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'delivery_jobs'`).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	if dead != 0 {
		t.Errorf("%d dead rows after the vacuum", dead)
	}
}

// Tables are analyzed once enough of them changed since their last analyze
// (the planner then counts the rows there are), and not before.
func TestUpkeepAnalyzesGrownTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	// Autovacuum stays out of these tables here: its analyze of 2,000 new
	// job rows (0016 analyzes delivery_jobs at 5% changed) would leave
	// upkeep nothing to do, and did once under a busy make test.
	if _, err := pool.Exec(ctx, `ALTER TABLE delivery_jobs SET (autovacuum_enabled = false);
		ALTER TABLE projected_deliveries SET (autovacuum_enabled = false); ALTER TABLE events_view SET (autovacuum_enabled = false)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_number, trigger_type, due_at, version)
		SELECT 'd' || g, 'o', 'e', 'ev', 'c', 'dst', gen_random_uuid(), 'scheduled', 1, 'initial', now(), 1 FROM generate_series(1, 2000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO projected_deliveries (delivery_id, event_id, connection_id, destination_id)
		SELECT 'd' || g, 'ev', 'c', 'dst' FROM generate_series(1, 1000) g`); err != nil {
		t.Fatal(err)
	}
	tables := []string{"delivery_jobs", "projected_deliveries", "events_view"}
	if did, err := (upkeep.Upkeep{Pool: pool, Analyze: tables, MinChanged: 1 << 40}).Once(ctx); err != nil || len(did.Analyzed) > 0 {
		t.Fatalf("analyze below its threshold: %+v, err %v", did, err)
	}
	waitDid(t, upkeep.Upkeep{Pool: pool, Analyze: tables, MinChanged: 500}, func(d upkeep.Did) bool {
		slices.Sort(d.Analyzed)
		return slices.Equal(d.Analyzed, []string{"delivery_jobs", "projected_deliveries"}) // events_view did not change
	})
	for table, want := range map[string]float64{"delivery_jobs": 2000, "projected_deliveries": 1000} {
		var tuples float64
		if err := pool.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)`, table).Scan(&tuples); err != nil {
			t.Fatal(err)
		}
		if tuples != want {
			t.Errorf("after the analyze the planner counts %v %s rows, want %v", tuples, table, want)
		}
	}
	// Analyzed, the tables are quiet until they change again.
	if did, err := (upkeep.Upkeep{Pool: pool, Analyze: tables, MinChanged: 500}).Once(ctx); err != nil || len(did.Analyzed) > 0 {
		t.Fatalf("a second round: %+v, err %v", did, err)
	}
}
