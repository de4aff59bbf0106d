package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/eventstore"
)

// GroupStatus is one consumer group's progress through the log.
type GroupStatus struct {
	Group string `json:"group"`
	// Checkpoint is the last event the group processed (zero before its first).
	Position      int64  `json:"position"`
	TransactionID uint64 `json:"transaction_id"`
	// LagEvents counts committed events of the group's types it has not
	// processed; LagSeconds is the age of the oldest of them (0 when none).
	LagEvents  int64      `json:"lag_events"`
	LagSeconds float64    `json:"lag_seconds"`
	LastError  *string    `json:"last_error"`
	ErrorAt    *time.Time `json:"last_error_at"`
	Failures   int64      `json:"failures"`
}

// Status reports every consumer group's checkpoint, lag and last error.
func Status(ctx context.Context, db eventstore.DBTX, now time.Time) ([]GroupStatus, error) {
	out := make([]GroupStatus, 0, len(Groups))
	for _, g := range Groups {
		st := GroupStatus{Group: g.Name}
		var tx int64
		err := db.QueryRow(ctx, `SELECT offset_acked, last_processed_transaction_id::text::bigint FROM consumer_offsets WHERE consumer_group = $1`, g.Name).
			Scan(&st.Position, &tx)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("status of %s: %w", g.Name, err)
		}
		st.TransactionID = uint64(tx)
		var oldest *time.Time
		if err := db.QueryRow(ctx, `SELECT count(*), min(recorded_at) FROM events
			WHERE (transaction_id, global_position) > ($1::bigint::text::xid8, $2) AND event_type = ANY($3)`, tx, st.Position, g.Types).
			Scan(&st.LagEvents, &oldest); err != nil {
			return nil, fmt.Errorf("lag of %s: %w", g.Name, err)
		}
		if oldest != nil {
			st.LagSeconds = max(0, now.Sub(*oldest).Seconds())
		}
		err = db.QueryRow(ctx, `SELECT error, failed_at, failures FROM consumer_errors WHERE consumer_group = $1`, g.Name).Scan(&st.LastError, &st.ErrorAt, &st.Failures)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("errors of %s: %w", g.Name, err)
		}
		out = append(out, st)
	}
	return out, nil
}

// RecordError notes a consumer group handler's failure for Status.
func RecordError(ctx context.Context, db eventstore.DBTX, group, eventID string, cause error, at time.Time) error {
	msg := cause.Error()
	if len(msg) > 2000 {
		msg = msg[:2000]
	}
	_, err := db.Exec(ctx, `INSERT INTO consumer_errors (consumer_group, error, event_id, failed_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (consumer_group) DO UPDATE SET error = excluded.error, event_id = excluded.event_id, failed_at = excluded.failed_at,
			failures = consumer_errors.failures + 1`, group, msg, eventID, at)
	return err
}
