package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
)

// NewJob is the delivery_jobs row of a new delivery, written in the same
// transaction as its DeliveryRequested (the scheduler derives the same row
// from the log, idempotently, and is what rebuilds it).
type NewJob struct {
	DeliveryID, OrgID, EnvID, EventID, ConnectionID, DestinationID, ReceivedUUID, AttemptID, Trigger string
	Due                                                                                              time.Time
}

// Insert writes new deliveries' job rows; a row the scheduler already
// derived is left as it is. It does not wake dispatchers: the caller does,
// after its commit (a wake.Notifier), or with Notify in the transaction.
func Insert(ctx context.Context, tx pgx.Tx, jobs []NewJob) error {
	if len(jobs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, InsertSQL, InsertArgs(jobs)...); err != nil {
		return fmt.Errorf("insert jobs: %w", err)
	}
	return nil
}

const InsertSQL = `INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version, auto_retries, last_number, reopened)
		SELECT d, o, e, ev, c, dst, r::uuid, 'scheduled', a, 1, tr, due, 1, 0, 1, ''
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])
			AS u(d, o, e, ev, c, dst, r, a, tr, due)
		ON CONFLICT (delivery_id) DO NOTHING`

// InsertArgs are InsertSQL's arguments: one array per column.
func InsertArgs(jobs []NewJob) []any {
	cols := make([][]string, 9)
	due := make([]time.Time, len(jobs))
	for i, j := range jobs {
		for c, v := range []string{j.DeliveryID, j.OrgID, j.EnvID, j.EventID, j.ConnectionID, j.DestinationID, j.ReceivedUUID, j.AttemptID, j.Trigger} {
			cols[c] = append(cols[c], v)
		}
		due[i] = j.Due
	}
	return []any{cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8], due}
}

// Upsert writes the delivery's job from its folded state (and wakes the
// dispatcher on commit). Only a newer version overwrites the row.
func Upsert(ctx context.Context, tx pgx.Tx, d *domain.Delivery, org, env string) error {
	req := d.Requested()
	state, attemptID, number, trigger, due := "done", "", 0, "", time.Time{}
	if n := d.Next(); n != nil {
		state, attemptID, number, trigger, due = "scheduled", n.ID, n.Number, n.Trigger, n.Due
	}
	snap := snapshotOf(d)
	_, err := tx.Exec(ctx, `INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version, auto_retries, last_number, reopened)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
		ON CONFLICT (delivery_id) DO UPDATE SET state = excluded.state, attempt_id = excluded.attempt_id,
			attempt_number = excluded.attempt_number, trigger_type = excluded.trigger_type, due_at = excluded.due_at,
			lease_until = NULL, leased_by = NULL, version = excluded.version,
			auto_retries = excluded.auto_retries, last_number = excluded.last_number, reopened = excluded.reopened
		WHERE delivery_jobs.version < excluded.version`,
		req.DeliveryID, org, env, req.EventID, req.ConnectionID, req.DestinationID, req.ReceivedUUID,
		state, kit.NullIfEmpty(attemptID), number, kit.OrDefault(trigger, domain.TriggerInitial), due, d.Version(),
		snap.autoRetries, snap.lastNumber, snap.reopened)
	if err != nil {
		return fmt.Errorf("upsert job: %w", err)
	}
	return Notify(ctx, tx)
}

// Lock locks a delivery's job row in tx and returns its state and lease;
// pgx.ErrNoRows when the delivery has no job yet.
func Lock(ctx context.Context, tx pgx.Tx, deliveryID string) (state string, leaseUntil *time.Time, err error) {
	err = tx.QueryRow(ctx, `SELECT state, lease_until FROM delivery_jobs WHERE delivery_id = $1 FOR UPDATE`, deliveryID).Scan(&state, &leaseUntil)
	return state, leaseUntil, err
}
