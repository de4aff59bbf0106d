package jobs

import (
	"encoding/json"
	"fmt"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/projections"
)

// GroupScheduler is the scheduler's consumer group. Persisted name.
const GroupScheduler = projections.GroupScheduler

// ScheduleEvents are the event types schedule uses.
var ScheduleEvents = projections.SchedulerEvents

// LiveScheduleEvents are the event types the scheduler's consumer group
// reads while the engine runs: the manual retries (the seed contract's
// RetryRequested). A DeliveryRequested, DeliveryAttempted, RetryScheduled or
// MovedToDLQ has its delivery_jobs row written by its writer in the same
// transaction (ingest, replay release, the delivery handler), always, so
// reading them back would only repeat those writes (a statement per retry,
// which changed no row: measured at one per webhook with one forced retry);
// `projections rebuild scheduler` derives every row from every type when the
// table needs repair. RetryRequested is read so that a job row that fell
// behind a retry request is moved on.
var LiveScheduleEvents = projections.SchedulerLiveEvents

// schedule returns the statements that keep delivery_jobs in step with the delivery streams. Rows
// only move forward in version, so writes made directly by the delivery
// handler and the retry endpoint (in the same transaction as their events)
// are never undone by a lagging scheduler, and replaying is harmless.
func Schedule(e eventstore.Event) ([]eventstore.Statement, error) {
	var (
		out eventstore.Statements
		err error
	)
	add := out.Add
	switch e.Type {
	case domain.EvDeliveryRequested:
		var p domain.DeliveryRequested
		if err = json.Unmarshal(e.Payload, &p); err != nil {
			break
		}
		add(`WITH ins AS (
				INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
					state, attempt_id, attempt_number, trigger_type, due_at, version, auto_retries, last_number, reopened)
				VALUES ($1, $2, $3, $4, $5, $6, $7, 'scheduled', $8, 1, $9, $10, $11, 0, 1, '')
				ON CONFLICT (delivery_id) DO NOTHING RETURNING 1)
			SELECT pg_notify('`+Channel+`', '') FROM ins`,
			p.DeliveryID, e.OrgID, e.EnvID, p.EventID, p.ConnectionID, p.DestinationID, p.ReceivedUUID, p.AttemptID, p.TriggerType, p.RequestedAt, e.StreamVersion)
	case domain.EvRetryScheduled:
		var p domain.RetryScheduled
		if err = json.Unmarshal(e.Payload, &p); err != nil {
			break
		}
		add(scheduleSQL, e.StreamID, p.NextAttemptID, p.AttemptNumber, domain.TriggerRetry, p.NotBefore, e.StreamVersion)
	case domain.EvRetryRequested:
		var p domain.RetryRequested
		if err = json.Unmarshal(e.Payload, &p); err != nil {
			break
		}
		add(scheduleSQL, e.StreamID, p.AttemptID, p.AttemptNumber, domain.TriggerManual, p.RequestedAt, e.StreamVersion)
	case domain.EvDeliveryAttempted, domain.EvMovedToDLQ:
		add(`UPDATE delivery_jobs SET state = 'done', attempt_id = NULL, lease_until = NULL, leased_by = NULL, version = $2,
			auto_retries = NULL, last_number = NULL, reopened = NULL
			WHERE delivery_id = $1 AND version < $2`, e.StreamID, e.StreamVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("schedule %s %s: %w", e.Type, e.EventID, err)
	}
	return out, nil
}

const scheduleSQL = `WITH upd AS (
		UPDATE delivery_jobs SET state = 'scheduled', attempt_id = $2, attempt_number = $3, trigger_type = $4, due_at = $5,
			lease_until = NULL, leased_by = NULL, version = $6, auto_retries = NULL, last_number = NULL, reopened = NULL
		WHERE delivery_id = $1 AND version < $6 RETURNING 1)
	SELECT pg_notify('` + Channel + `', '') FROM upd`
