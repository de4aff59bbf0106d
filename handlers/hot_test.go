package handlers_test

import (
	"context"
	"testing"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// serve prepares HotStatements on its first connections: each must prepare
// on a migrated database, or the warm-up silently does nothing for it.
func TestHotStatementsPrepare(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	conn, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	stmts := handlers.HotStatements()
	if len(stmts) < 5 {
		t.Fatalf("%d hot statements", len(stmts))
	}
	for _, q := range stmts {
		if _, err := conn.Conn().Prepare(context.Background(), q, q); err != nil {
			t.Errorf("prepare %.60q: %v", q, err)
		}
	}
}
