package kit_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// SendTx runs its statements on generic plans, commits durably unless told
// otherwise, and leaves the connection's own settings as they were.
func TestSendTxSettingsLastTheTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := durablePool(t)
	const base = "on"
	for _, durable := range []bool{true, false} {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue("SELECT current_setting('plan_cache_mode'), current_setting('synchronous_commit')")
		var plans, commit string
		err := kit.SendTx(ctx, pool, durable, b, func(br pgx.BatchResults) error {
			return br.QueryRow().Scan(&plans, &commit)
		})
		if err != nil {
			t.Fatal(err)
		}
		want := base
		if !durable {
			want = "off"
		}
		if plans != "force_generic_plan" || commit != want {
			t.Errorf("durable %v: plan_cache_mode %s, synchronous_commit %s", durable, plans, commit)
		}
		if err := pool.QueryRow(ctx, "SELECT current_setting('plan_cache_mode'), current_setting('synchronous_commit')").Scan(&plans, &commit); err != nil {
			t.Fatal(err)
		}
		if plans != "auto" || commit != base {
			t.Errorf("after the transaction: plan_cache_mode %s, synchronous_commit %s", plans, commit)
		}
	}
	if err := kit.SendTx(ctx, pool, true, &pgx.Batch{}, func(pgx.BatchResults) error { return nil }); err == nil {
		t.Error("a batch without BEGIN was sent")
	}
}

// A GenericPool's connections run on generic plans by their own setting:
// SendGenericTx sends no settings statement (the batch gains only its
// COMMIT), commits durably, and the pool it was made from keeps auto.
func TestSendGenericTxRunsOnTheConnectionsSetting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := durablePool(t)
	generic, err := kit.NewGenericPool(ctx, pool, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(generic.Close)
	for i := 0; i < 3; i++ { // new and reused connections alike
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue("SELECT current_setting('plan_cache_mode'), current_setting('synchronous_commit')")
		var plans, commit string
		if err := kit.SendGenericTx(ctx, generic, b, func(br pgx.BatchResults) error {
			return br.QueryRow().Scan(&plans, &commit)
		}); err != nil {
			t.Fatal(err)
		}
		if plans != "force_generic_plan" || commit != "on" {
			t.Errorf("plan_cache_mode %s, synchronous_commit %s; want force_generic_plan, on", plans, commit)
		}
		if n := len(b.QueuedQueries); n != 3 || b.QueuedQueries[2].SQL != "COMMIT" {
			t.Errorf("the batch sent was %d statements, want BEGIN, the query, COMMIT", n)
		}
	}
	var plans string
	if err := pool.QueryRow(ctx, "SHOW plan_cache_mode").Scan(&plans); err != nil {
		t.Fatal(err)
	}
	if plans != "auto" {
		t.Errorf("the pool the generic one was made from runs with plan_cache_mode %s", plans)
	}
	if max := generic.Config().MaxConns; max != 2 {
		t.Errorf("the generic pool may open %d connections, want 2", max)
	}
}

// durablePool is a pool on a fresh database whose commits wait for their
// WAL flush (the test cluster's default is not to).
func durablePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
