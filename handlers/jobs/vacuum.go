package jobs

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Vacuum keeps delivery_jobs' claim index free of finished jobs.
//
// Every job row is rewritten several times (claimed, recorded, retried,
// finished), and each finished job leaves a dead entry in the claim index
// until the table is vacuumed. Autovacuum visits a database at most once per
// autovacuum_naptime (a minute by default) and waits for 20% of the table to
// be dead: under load the claims walked ever more dead entries (the tuples a
// claim scanned rose from ~40 to ~100 over a 100,000-webhook run, with the
// rate falling by a third). Vacuum checks the table's dead rows every Every
// and vacuums it when there are at least MinDead: one process at a time
// (SKIP_LOCKED), a few milliseconds for a table of live jobs.
type Vacuum struct {
	Pool *pgxpool.Pool
	Log  *slog.Logger
	// Every is how often the dead rows are counted (default 5s).
	Every time.Duration
	// MinDead is the count of dead rows that triggers a vacuum (default 5,000).
	MinDead int64
}

// Run vacuums until ctx ends. A vacuum the database refuses (the role does
// not own the table) is logged once and not tried again: autovacuum covers.
func (v Vacuum) Run(ctx context.Context) {
	if v.Every <= 0 {
		v.Every = 5 * time.Second
	}
	if v.MinDead <= 0 {
		v.MinDead = 5000
	}
	if v.Log == nil {
		v.Log = slog.Default()
	}
	t := time.NewTicker(v.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := v.Once(ctx); err != nil && ctx.Err() == nil {
			v.Log.Warn("vacuum delivery_jobs failed; leaving it to autovacuum", "err", err)
			return
		}
	}
}

// Once vacuums delivery_jobs if it holds at least MinDead dead rows, and
// reports whether it did.
func (v Vacuum) Once(ctx context.Context) (bool, error) {
	var dead int64
	err := v.Pool.QueryRow(ctx, `SELECT coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'delivery_jobs'::regclass), 0)`).Scan(&dead)
	if err != nil || dead < v.MinDead {
		return false, err
	}
	// VACUUM runs outside a transaction block: Exec with no arguments sends
	// it as a simple query.
	if _, err := v.Pool.Exec(ctx, `VACUUM (SKIP_LOCKED) delivery_jobs`); err != nil {
		return false, err
	}
	return true, nil
}
