package main

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// Every warmed connection holds a generic plan for each hot statement
// before traffic, and serve's connections come out of the warm-up with
// PostgreSQL's default plan choice.
func TestWarmPoolBuildsGenericPlans(t *testing.T) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	cfg.MaxConns = n
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	stmts := handlers.HotStatements()
	warmPool(ctx, pool, stmts, n, slog.New(slog.NewTextHandler(io.Discard, nil)))

	var conns []*pgxpool.Conn
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range n { // the pool holds n connections: all of them warmed
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var prepared, generic int
		var mode string
		if err := c.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE generic_plans > 0 AND custom_plans = 0),
			current_setting('plan_cache_mode') FROM pg_prepared_statements WHERE name LIKE 'stmt\_%'`).Scan(&prepared, &generic, &mode); err != nil {
			t.Fatal(err)
		}
		if prepared != len(stmts) || generic != len(stmts) {
			t.Errorf("connection %d: %d of %d hot statements prepared, %d with only a generic plan", len(conns), prepared, len(stmts), generic)
		}
		if mode != "auto" {
			t.Errorf("connection %d: plan_cache_mode is %q after the warm-up, want auto", len(conns), mode)
		}
	}
}

// A statement whose plan cannot be built fails the warm-up of its
// connection, which then keeps the default plan choice and no open
// transaction.
func TestBuildGenericPlansFailureLeavesTheConnectionClean(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE warm_gone (x int)"); err != nil {
		t.Fatal(err)
	}
	ok, err := conn.Prepare(ctx, "SELECT count(*) FROM events WHERE stream_id = $1", "SELECT count(*) FROM events WHERE stream_id = $1")
	if err != nil {
		t.Fatal(err)
	}
	gone, err := conn.Prepare(ctx, "SELECT x FROM warm_gone", "SELECT x FROM warm_gone")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "DROP TABLE warm_gone"); err != nil {
		t.Fatal(err)
	}
	if err := buildGenericPlans(ctx, conn, []*pgconn.StatementDescription{ok, gone}); err == nil {
		t.Fatal("buildGenericPlans with a statement over a dropped table: no error")
	}
	if st := conn.PgConn().TxStatus(); st != 'I' {
		t.Errorf("transaction status %q after the failure, want idle", st)
	}
	var mode string
	if err := conn.QueryRow(ctx, "SELECT current_setting('plan_cache_mode')").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "auto" {
		t.Errorf("plan_cache_mode is %q after the failure, want auto", mode)
	}
}
