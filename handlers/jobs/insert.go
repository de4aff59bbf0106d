package jobs

import (
	"context"
	"fmt"
	"strings"
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
	// Sent is the webhook as the ingest holds it, for a job it may hand
	// over (InsertTakeSQLFor): the insert then does not read it back from
	// the log. Nil: a taken job's webhook is read from its EventReceived.
	Sent *Sent
}

// Sent is a webhook's body (base64) and content type.
type Sent struct{ BodyB64, ContentType string }

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

// InsertTakeSQL is InsertSQL for an ingest whose own process sends some of
// the new jobs itself (Handoff): a job marked in $12 is inserted already
// leased to worker $13 until $1 + $14, unless it is not due yet, its
// destination or route is paused, its circuit is not closed (the rules a
// claim applies) or an older due job of its destination is waiting (new
// jobs do not overtake a backlog), and is returned as a claim returns it
// (claimedSelect).
// The others are inserted unleased, for a claim to take. A job handed over
// this way costs no claim: no statement of its own, no round trip, no
// dispatcher wake-up.
//
// Each of take's four lookups is a probe by its job's keys (PerRow), and
// the backlog probe reads the claim index in due order: left to choose,
// PostgreSQL made each a hashed subplan, which reads every row its
// subquery can match, whatever the job. For the backlog that was every due,
// unleased job of every destination: with 100,000 jobs held by one paused
// destination, each hand-off insert of every other tenant read all of
// them (57 ms a statement instead of 2). The other three read every paused
// destination, every connection with its source, every open circuit.
var InsertTakeSQL = `WITH ins AS (
    INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
        state, attempt_id, attempt_number, trigger_type, due_at, version, auto_retries, last_number, reopened, lease_until, leased_by)
    SELECT d, o, e, ev, c, dst, r::uuid, 'scheduled', a, 1, tr, due, 1, 0, 1, '',
        CASE WHEN take THEN $1 + $14::interval END, CASE WHEN take THEN $13::text END
    FROM (SELECT v.*, v.tk AND v.due <= $1
                 AND NOT ` + PerRow(PausedDestination("v.dst")) + `
                 AND NOT ` + PerRow(PausedRoute("v.c")) + `
                 AND NOT ` + PerRow(`EXISTS (SELECT 1 FROM destination_circuits k WHERE k.destination_id = v.dst AND k.state <> 'closed')`) + `
                 -- No older due job of the destination waits (a backlog held by
                 -- a pause or an open circuit goes first, in due order).
                 AND NOT ` + PerRow(`EXISTS (SELECT 1 FROM delivery_jobs o WHERE o.destination_id = v.dst AND o.state = 'scheduled'
                                 AND o.due_at <= $1 AND (o.lease_until IS NULL OR o.lease_until < $1) ORDER BY o.due_at)`) + ` AS take
          FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                      $11::timestamptz[], $12::bool[]) AS v(d, o, e, ev, c, dst, r, a, tr, due, tk)
          -- OFFSET 0 keeps this subquery whole: pulled up, take's four
          -- lookups were copied into both CASEs below and ran twice a row.
          OFFSET 0) t
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING delivery_id, org_id, env_id, event_id, destination_id, attempt_id, attempt_number, version, received_uuid, due_at,
        trigger_type, auto_retries, last_number, reopened, leased_by
), u AS (SELECT * FROM ins WHERE leased_by IS NOT NULL)
` + claimedSelect + `
ORDER BY u.destination_id, u.due_at`

// PerRow makes an EXISTS (…) a probe run for each row with that row's
// values: its OFFSET 0 keeps PostgreSQL from turning it into a hashed
// subplan, which reads everything the subquery could match once a
// statement, to hash it: a cost that grows with every tenant's
// configuration (destinations, routes, circuits), not with the statement's
// own rows.
func PerRow(exists string) string {
	return strings.TrimSuffix(exists, ")") + " OFFSET 0)"
}

// insertTakeSentSQL is InsertTakeSQL returning an empty body and content
// type instead of reading them from the log (the EventReceived's payload,
// found by its event id): the ingest that hands the jobs over holds them
// (NewJob.Sent), and at 150 webhooks/s the statement took about 175 µs, a
// lookup of events and a read of its jsonb among its work.
var insertTakeSentSQL = strings.Replace(strings.Replace(InsertTakeSQL,
	claimedBody, `'', ''`, 1), claimedWebhook, ``, 1)

// InsertTakeSQLFor is the hand-off insert for newJobs: insertTakeSentSQL
// when every job take marks carries its webhook (Sent), else InsertTakeSQL.
func InsertTakeSQLFor(newJobs []NewJob, take []bool) string {
	for i, j := range newJobs {
		if i < len(take) && take[i] && j.Sent == nil {
			return InsertTakeSQL
		}
	}
	return insertTakeSentSQL
}

// InsertTakeArgs are InsertTakeSQL's arguments: take marks the jobs this
// process would send, now is the time their leases start from.
func InsertTakeArgs(jobs []NewJob, take []bool, now time.Time, worker string, ttl time.Duration) []any {
	return append(append([]any{now}, InsertArgs(jobs)...), take, worker, ttl)
}

// Handoff lets ingest give new jobs to a delivery engine in its own
// process, leased in the ingest's own transaction (InsertTakeSQL), instead
// of leaving them for a claim.
type Handoff interface {
	// Reserve reports which of the new jobs the engine has room for now
	// (nil: none), and the ticket that follows the insert; it does no I/O.
	Reserve(newJobs []NewJob) (take []bool, t Ticket)
}

// Ticket follows one InsertTakeSQL: Lease gives its lease arguments, Read
// reads its rows (inside the transaction's pipeline; a row it cannot read
// is only not sent now: its lease runs out and a claim takes it; Read
// returns only the statement's own error, which aborts the transaction),
// then exactly one of Committed and Aborted.
type Ticket interface {
	Lease() (now time.Time, worker string, ttl time.Duration)
	Read(rows pgx.Rows) error
	// Committed sends the jobs read; it reports whether every job reserved
	// was taken (else some may be due now and wait for a claim).
	Committed() bool
	Aborted()
}
