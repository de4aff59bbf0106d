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

// add appends a delivery's row: its next attempt, or done.
func (r *Rows) Add(id string, d *domain.Delivery, now time.Time) {
	state, attempt, num, trigger, due := "done", "", int32(0), domain.TriggerInitial, now
	if n := d.Next(); n != nil {
		state, attempt, num, trigger, due = "scheduled", n.ID, int32(n.Number), n.Trigger, n.Due
	}
	r.id, r.state, r.attempt, r.trigger = append(r.id, id), append(r.state, state), append(r.attempt, attempt), append(r.trigger, trigger)
	r.num, r.due, r.ver = append(r.num, num), append(r.due, due), append(r.ver, d.Version())
	snap := snapshotOf(d)
	r.auto, r.last, r.reopened = append(r.auto, snap.autoRetries), append(r.last, snap.lastNumber), append(r.reopened, snap.reopened)
}

// Args are UpdateSQL's arguments.
func (r *Rows) Args() []any {
	return []any{r.id, r.state, r.attempt, r.num, r.trigger, r.due, r.ver, r.auto, r.last, r.reopened}
}

// UpdateSQL moves job rows to their deliveries' folded state; a row is
// only ever moved forward in version.
const UpdateSQL = `UPDATE delivery_jobs j SET state = u.state, attempt_id = NULLIF(u.attempt_id, ''), attempt_number = u.num,
		trigger_type = u.trig, due_at = u.due, lease_until = NULL, leased_by = NULL, version = u.ver,
		auto_retries = u.auto, last_number = u.last, reopened = u.reopened
	FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[], $7::bigint[], $8::int[], $9::int[], $10::text[])
		AS u(id, state, attempt_id, num, trig, due, ver, auto, last, reopened)
	WHERE j.delivery_id = u.id AND j.version < u.ver`

// ReleaseSQL hands back jobs whose attempt was already recorded.
const ReleaseSQL = `UPDATE delivery_jobs SET lease_until = NULL, leased_by = NULL WHERE delivery_id = ANY($1) AND leased_by = $2`

// ReleaseWorkerSQL hands back the jobs worker $1 claimed but never started.
const ReleaseWorkerSQL = `UPDATE delivery_jobs SET lease_until = NULL, leased_by = NULL WHERE leased_by = $1 AND state = 'scheduled'`

// Len is how many rows r holds.
func (r *Rows) Len() int { return len(r.id) }
