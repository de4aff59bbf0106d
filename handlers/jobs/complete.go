package jobs

import (
	"time"

	"github.com/hookstream/hookstream/domain"
)

// Rows are the delivery_jobs rows a batch's folded deliveries give.
type Rows struct {
	id, state, attempt, trigger []string
	num                         []int32
	due                         []time.Time
	ver                         []int64
	// the snapshot columns (NULL for a done job)
	auto, last []*int32
	reopened   []*string
	// the lease a row keeps (NULL: handed back), and the destination's
	// updated_at it was claimed under
	lease, destAt []*time.Time
}

// snapshot is a delivery's DeliveryState columns; all nil without one.
type snapshot struct {
	autoRetries, lastNumber *int32
	reopened                *string
}

func snapshotOf(d *domain.Delivery) snapshot {
	s, ok := d.State()
	if !ok {
		return snapshot{}
	}
	auto, last := int32(s.AutoRetries), int32(s.LastNumber)
	return snapshot{autoRetries: &auto, lastNumber: &last, reopened: &s.Reopened}
}

// Snapshot reads a claimed job's snapshot columns back into the state
// RecordAttempt needs; nil when the row has none.
func Snapshot(version int64, eventID string, next domain.PlannedAttempt, autoRetries, lastNumber *int32, reopened *string) *domain.DeliveryState {
	if autoRetries == nil || lastNumber == nil || reopened == nil {
		return nil
	}
	return &domain.DeliveryState{Version: version, EventID: eventID, Next: next, LastNumber: int(*lastNumber),
		AutoRetries: int(*autoRetries), Reopened: *reopened}
}

// Add appends a delivery's row: its next attempt, or done; the job's
// lease is handed back.
func (r *Rows) Add(id string, d *domain.Delivery, now time.Time) { r.add(id, d, now, nil, nil) }

// AddHeld is Add for a delivery whose next attempt, due now, the worker
// sends at once itself: the row keeps its lease, until until, so no other
// claim takes it meanwhile, as long as its destination is still active and
// unchanged since destAt (its updated_at when the job was claimed).
func (r *Rows) AddHeld(id string, d *domain.Delivery, now, until, destAt time.Time) {
	r.add(id, d, now, &until, &destAt)
}

func (r *Rows) add(id string, d *domain.Delivery, now time.Time, lease, destAt *time.Time) {
	state, attempt, num, trigger, due := "done", "", int32(0), domain.TriggerInitial, now
	if n := d.Next(); n != nil {
		state, attempt, num, trigger, due = "scheduled", n.ID, int32(n.Number), n.Trigger, n.Due
	}
	r.id, r.state, r.attempt, r.trigger = append(r.id, id), append(r.state, state), append(r.attempt, attempt), append(r.trigger, trigger)
	r.num, r.due, r.ver = append(r.num, num), append(r.due, due), append(r.ver, d.Version())
	snap := snapshotOf(d)
	r.auto, r.last, r.reopened = append(r.auto, snap.autoRetries), append(r.last, snap.lastNumber), append(r.reopened, snap.reopened)
	r.lease, r.destAt = append(r.lease, lease), append(r.destAt, destAt)
}

// Args are UpdateSQL's arguments; worker is who holds the leases kept.
func (r *Rows) Args(worker string) []any {
	return []any{r.id, r.state, r.attempt, r.num, r.trigger, r.due, r.ver, r.auto, r.last, r.reopened, r.lease, worker, r.destAt}
}

// UpdateSQL moves job rows to their deliveries' folded state; a row is
// only ever moved forward in version. Its lease is handed back, or kept by
// worker $12 until the row's lease time (AddHeld) when that worker still
// holds it, its destination is active and unchanged since the claim (the
// chained attempt reuses what the claim read), and neither its connection
// nor its source is paused: a pause, a disabled or edited destination
// holds a chained retry like any other job. It returns the rows that kept
// their leases. The rows are also found by key (= ANY($1)): joined to
// unnest alone, the generic plan scanned the whole table. OFFSET 0 keeps
// the lease's subquery whole: pulled up, its look-ups ran once for each of
// the two columns it sets.
var UpdateSQL = `UPDATE delivery_jobs j SET state = u.state, attempt_id = NULLIF(u.attempt_id, ''), attempt_number = u.num,
		trigger_type = u.trig, due_at = u.due, version = u.ver, auto_retries = u.auto, last_number = u.last, reopened = u.reopened,
		(lease_until, leased_by) = (SELECT h.lease, CASE WHEN h.lease IS NULL THEN NULL ELSE $12 END
			FROM (SELECT CASE WHEN u.lease IS NOT NULL AND u.state = 'scheduled' AND j.leased_by = $12
				AND EXISTS (SELECT 1 FROM destinations x WHERE x.id = j.destination_id AND x.status = 'active' AND x.updated_at = u.dest_at)
				AND NOT ` + PausedRoute("j.connection_id") + `
				THEN u.lease END AS lease OFFSET 0) h)
	FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[], $7::bigint[], $8::int[], $9::int[], $10::text[],
		$11::timestamptz[], $13::timestamptz[]) AS u(id, state, attempt_id, num, trig, due, ver, auto, last, reopened, lease, dest_at)
	WHERE j.delivery_id = u.id AND j.delivery_id = ANY($1::text[]) AND j.version < u.ver
	RETURNING j.delivery_id, j.leased_by IS NOT NULL`

// CircuitGuardSQL fails its transaction (CircuitGuardCode) when one of the
// destinations in $1 has no circuit row yet, or has its breaker on with a
// circuit its batch may move: an attempt of it failed ($2, by destination),
// or the circuit is not clean (closed, no failures, no probe). Both checks
// probe the batch's own destinations (PerRow): the first, as a hashed
// subplan, read every tenant's circuit rows on every batch.
var CircuitGuardSQL = `SELECT CASE WHEN EXISTS (SELECT 1 FROM unnest($1::text[], $2::bool[]) AS g(dest, failed)
		WHERE NOT ` + PerRow(`EXISTS (SELECT 1 FROM destination_circuits WHERE destination_id = g.dest)`) + `
		   OR ` + PerRow(`EXISTS (SELECT 1 FROM destinations d JOIN destination_circuits k ON k.destination_id = d.id
			WHERE d.id = g.dest AND d.circuit_breaker_enabled
			  AND (g.failed OR NOT (k.state = 'closed' AND k.failure_count = 0 AND k.probe_delivery_id IS NULL)))`) + `)
	THEN hookstream_circuit_guard() ELSE 0 END`

// CircuitGuardCode is the SQLSTATE hookstream_circuit_guard raises (migration 0013).
const CircuitGuardCode = "HS412"

// ReleaseSQL hands back jobs whose attempt was already recorded.
const ReleaseSQL = `UPDATE delivery_jobs SET lease_until = NULL, leased_by = NULL WHERE delivery_id = ANY($1) AND leased_by = $2`

// ReleaseWorkerSQL hands back the jobs worker $1 claimed but never started.
const ReleaseWorkerSQL = `UPDATE delivery_jobs SET lease_until = NULL, leased_by = NULL WHERE leased_by = $1 AND state = 'scheduled'`

// Len is how many rows r holds.
func (r *Rows) Len() int { return len(r.id) }

// PruneDoneSQL deletes up to 10,000 job rows finished (due_at is when) a
// minute ago or more: delivery_jobs keeps the live deliveries, and the
// finished ones long enough for the attempts read model to have them
// (RetryEvent and audit find an event's deliveries in both). A manual retry
// of a finished delivery writes its row again (Upsert); the scheduler's
// live consumer only updates rows, so it never brings one back.
//
// The outer WHERE repeats the subquery's test: a row a retry rescheduled
// while the DELETE waited for its lock is re-checked on its new version
// (the subquery is not run again) and kept; rows locked meanwhile are
// skipped for the next round.
const PruneDoneSQL = `DELETE FROM delivery_jobs WHERE delivery_id IN (SELECT delivery_id FROM delivery_jobs
	WHERE state = 'done' AND due_at < now() - interval '1 minute' LIMIT 10000 FOR UPDATE SKIP LOCKED)
	AND state = 'done' AND due_at < now() - interval '1 minute'`

// Merge appends o's rows to r.
func (r *Rows) Merge(o Rows) {
	r.id, r.state, r.attempt, r.trigger = append(r.id, o.id...), append(r.state, o.state...), append(r.attempt, o.attempt...), append(r.trigger, o.trigger...)
	r.num, r.due, r.ver = append(r.num, o.num...), append(r.due, o.due...), append(r.ver, o.ver...)
	r.auto, r.last, r.reopened = append(r.auto, o.auto...), append(r.last, o.last...), append(r.reopened, o.reopened...)
	r.lease, r.destAt = append(r.lease, o.lease...), append(r.destAt, o.destAt...)
}
