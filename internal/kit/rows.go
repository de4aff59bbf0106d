package kit

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SendTx sends b (which starts with BEGIN) and COMMIT in one round trip;
// read consumes the results of b's statements after BEGIN. It returns the
// first error; a transaction whose statements failed is rolled back, never
// committed. The COMMIT is in the pipeline: an error read returns for a
// result the server accepted (a client-side decoding error) still leaves
// the transaction committed, so callers must treat an error as "maybe
// committed" (appends at an expected version make a retry safe).
//
// The transaction's statements run on their generic plans. These are the
// hot writers' statements (an append, a job insert or update), keyed by
// unnest arrays: left to choose, PostgreSQL planned them afresh on every
// call (a plan for each array length looks cheaper than the generic one),
// and at 150 webhooks/s planning the append and the job update cost more
// than running them (1.9 s and 1.1 s of planning against 1.3 s and 0.3 s
// of execution over 2,000 webhooks). Their plans do not depend on the
// values: stream and job lookups by key.
//
// With durable false the commit does not wait for its WAL flush
// (synchronous_commit off): for writes a PostgreSQL crash may lose without
// breaking a promise, which the caller's comment must say.
func SendTx(ctx context.Context, pool *pgxpool.Pool, durable bool, b *pgx.Batch, read func(pgx.BatchResults) error) error {
	if len(b.QueuedQueries) == 0 || b.QueuedQueries[0].SQL != "BEGIN" {
		return fmt.Errorf("kit.SendTx: the batch must start with BEGIN")
	}
	settings := genericPlans
	if !durable {
		settings = genericPlansAsync
	}
	b.QueuedQueries = append(b.QueuedQueries[:1], append([]*pgx.QueuedQuery{{SQL: settings}}, b.QueuedQueries[1:]...)...)
	b.Queue("COMMIT")
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release() // a connection left inside a transaction is closed, not reused
	br := conn.SendBatch(ctx, b)
	_, err = br.Exec() // BEGIN
	if err == nil {
		_, err = br.Exec() // settings
	}
	if err == nil {
		err = read(br)
	}
	if err == nil {
		var tag pgconn.CommandTag
		if tag, err = br.Exec(); err == nil && tag.String() != "COMMIT" {
			err = fmt.Errorf("commit: the transaction was rolled back (%s)", tag)
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if conn.Conn().PgConn().TxStatus() != 'I' {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	}
	return err
}

// genericPlans makes a transaction's statements use their generic plans;
// genericPlansAsync also lets its commit skip waiting for the WAL flush.
const (
	genericPlans      = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"
	genericPlansAsync = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('synchronous_commit', 'off', true)"
)

// CollectRows scans every row with scan; it always returns a non-nil slice
// on success, so empty lists encode as [].
func CollectRows[T any](rows pgx.Rows, err error, scan func(pgx.Row) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
