// Package jobs owns the delivery_jobs table, the queue the dispatcher claims
// from: every write to it (new deliveries' rows, retry schedules, claims,
// completions, hand-backs) is SQL from this package, and the NOTIFY channel
// that wakes dispatchers is the named constant Channel.
package jobs

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/projections"
)

// Channel is the NOTIFY channel that wakes dispatchers when jobs become due
// now. The scheduler rebuild (projections) notifies it too.
const Channel = projections.JobsChannel

// Notify wakes every dispatcher when tx commits.
func Notify(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify('`+Channel+`', '')`)
	return err
}
