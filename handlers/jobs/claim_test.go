package jobs_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// A claim and a batch's circuit guard probe their own destinations'
// pause, tenant and circuit rows; they do not read every tenant's
// configuration. Among 3,000 routes of seven tenants (manyRoutes), d1 has
// 16 due jobs; with the generic plan the dispatcher's transaction uses, the
// claim takes all 16 and reads at most a few circuit rows and a row of
// destinations for each job it returns (the lane's configuration), and the
// guard over two destinations at most a few of either table. With the
// checks as hashed subplans, PostgreSQL's choice, the claim read all 3,000
// destinations and 1,500 circuit rows, and the guard all 1,500 circuit
// rows, every time.
func TestClaimAndGuardReadOnlyTheirDestinations(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	manyRoutes(ctx, t, pool, `INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version)
			SELECT 'due' || g, 'o1', 'e', 'ev' || g, 'c1', 'd1', gen_random_uuid(), 'scheduled', 'a' || g, 1, 'initial',
				now() - interval '1 minute', 1 FROM generate_series(1, 16) g`)
	tx := genericTx(ctx, t, pool)
	before := rowsRead(ctx, t, tx)
	// The claim's rows: the jobs with their webhook (whose EventReceived the
	// log does not hold here, so none comes back) — the lease is what counts.
	rows, err := tx.Query(ctx, jobs.ClaimSQL, time.Now().UTC(), 64, []string{}, []int32{}, 32, nil,
		uuid.NewString(), time.Minute, "", []string{})
	if err != nil {
		t.Fatal(err)
	}
	if rows.Close(); rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	read := readSince(ctx, t, tx, before)
	var leased int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM delivery_jobs WHERE leased_by IS NOT NULL`).Scan(&leased); err != nil {
		t.Fatal(err)
	}
	if leased != 16 {
		t.Fatalf("the claim leased %d of d1's 16 due jobs", leased)
	}
	if read["destinations"] > 16+5 || read["destination_circuits"] > 5 {
		t.Errorf("a claim of one destination's 16 jobs read %d rows of destinations and %d of destination_circuits",
			read["destinations"], read["destination_circuits"])
	}

	// The guard, in a transaction of its own (it fails its transaction when
	// it refuses a batch).
	tx2 := genericTx(ctx, t, pool)
	before = rowsRead(ctx, t, tx2)
	var guard int
	// d2 and d4: clean closed circuits; their breakers are on.
	if err := tx2.QueryRow(ctx, jobs.CircuitGuardSQL, []string{"d2", "d4"}, []bool{false, false}).Scan(&guard); err != nil {
		t.Fatalf("the guard of two clean circuits: %v", err)
	}
	for table, n := range readSince(ctx, t, tx2, before) {
		if n > 5 {
			t.Errorf("the guard of two destinations read %d rows of %s", n, table)
		}
	}
	// d1 has no circuit row yet: the guard refuses the batch.
	err = tx2.QueryRow(ctx, jobs.CircuitGuardSQL, []string{"d2", "d1"}, []bool{false, false}).Scan(&guard)
	if pgErr := (*pgconn.PgError)(nil); !errors.As(err, &pgErr) || pgErr.Code != jobs.CircuitGuardCode {
		t.Errorf("the guard of a destination without a circuit row: %v, want SQLSTATE %s", err, jobs.CircuitGuardCode)
	}
}

// genericTx begins a transaction, rolled back when the test ends, that
// plans its statements generically, as the dispatcher's and the ingest's do.
func genericTx(ctx context.Context, tb testing.TB, pool *pgxpool.Pool) pgx.Tx {
	tb.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, `SELECT set_config('plan_cache_mode', 'force_generic_plan', true)`); err != nil {
		tb.Fatal(err)
	}
	return tx
}
