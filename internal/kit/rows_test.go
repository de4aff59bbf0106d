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
	cfg, err := pgxpool.ParseConfig(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on" // the test cluster's default is off
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
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
