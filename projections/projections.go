// Package projections builds hookstream's read models from the event store.
// Each projection is a pure function of events applied in commit order by
// its own consumer group; its checkpoint commits in the same transaction as
// its writes, so a read model is never ahead of or behind its checkpoint.
package projections

import (
	"encoding/json"
	"fmt"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// Consumer-group names. Persisted: renaming one replays its projection.
const (
	GroupDeliveryAttempts = "projector.delivery_attempts"
	GroupEvents           = "projector.events"
)

// DeliveryAttemptsEvents are the event types DeliveryAttempts uses; its
// consumer group reads only these.
var DeliveryAttemptsEvents = []string{
	domain.EvDeliveryRequested, domain.EvRetryRequested, domain.EvDeliveryAttempted, domain.EvRetryScheduled, domain.EvMovedToDLQ,
	domain.EvDestinationCreated, domain.EvDestinationUpdated, domain.EvConnectionCreated, domain.EvConnectionUpdated,
}

// EventsEvents are the event types Events uses.
var EventsEvents = []string{domain.EvEventReceived, domain.EvDeliveryAttempted, domain.EvMovedToDLQ}

// DeliveryAttempts returns the statements that fold one event into
// delivery_attempts (and its helper projected_deliveries); none for events it
// ignores. Every statement is idempotent, so a redelivered event changes nothing.
func DeliveryAttempts(e eventstore.Event) ([]eventstore.Statement, error) {
	var (
		out eventstore.Statements
		err error
	)
	add := out.Add
	switch e.Type {
	case domain.EvDeliveryRequested:
		var p domain.DeliveryRequested
		if p, err = payload[domain.DeliveryRequested](e); err != nil {
			break
		}
		add(`INSERT INTO projected_deliveries (delivery_id, event_id, connection_id, destination_id, connection_name, destination_name, replay_id)
			VALUES ($1, $2, $3, $4, $5, $6, NULLIF($7, '')) ON CONFLICT (delivery_id) DO NOTHING`,
			p.DeliveryID, p.EventID, p.ConnectionID, p.DestinationID, p.ConnectionName, p.DestinationName, p.ReplayID)
		add(insertPendingSQL, pendingArgs(e, p.AttemptID, p.DeliveryID, 1, p.TriggerType, p.RequestURL, p.RequestMethod, p.RequestedAt)...)
	case domain.EvRetryRequested:
		var p domain.RetryRequested
		if p, err = payload[domain.RetryRequested](e); err != nil {
			break
		}
		add(insertPendingSQL, pendingArgs(e, p.AttemptID, e.StreamID, p.AttemptNumber, domain.TriggerManual, p.RequestURL, p.RequestMethod, p.RequestedAt)...)
	case domain.EvDeliveryAttempted:
		var p domain.DeliveryAttempted
		if p, err = payload[domain.DeliveryAttempted](e); err != nil {
			break
		}
		// Headers and body stay in the log: attempted_pos points at this event.
		add(`INSERT INTO delivery_attempts (id, org_id, env_id, delivery_id, event_id, connection_id, destination_id,
				request_url, request_method, attempted_pos, request_body_size, response_status,
				duration_ms, status, error, created_at, attempt_number, trigger_type, connection_name, destination_name, replay_id)
			SELECT $1, $2, $3, d.delivery_id, d.event_id, d.connection_id, d.destination_id, $5, $6, $7, $8, $9, $10, $11, $12,
				$13, $14, $15, d.connection_name, d.destination_name, d.replay_id
			FROM projected_deliveries d WHERE d.delivery_id = $4
			ON CONFLICT (id) DO UPDATE SET request_url = excluded.request_url, request_method = excluded.request_method,
				attempted_pos = excluded.attempted_pos, request_body_size = excluded.request_body_size,
				response_status = excluded.response_status, duration_ms = excluded.duration_ms, status = excluded.status,
				error = excluded.error, attempt_number = excluded.attempt_number, trigger_type = excluded.trigger_type`,
			p.AttemptID, e.OrgID, e.EnvID, e.StreamID, p.RequestURL, p.RequestMethod, e.GlobalPosition, p.RequestBodySize,
			p.ResponseStatus, p.DurationMS, p.Status, p.Error, p.StartedAt, p.AttemptNumber, p.TriggerType)
	case domain.EvRetryScheduled:
		var p domain.RetryScheduled
		if p, err = payload[domain.RetryScheduled](e); err != nil {
			break
		}
		add(`UPDATE delivery_attempts SET next_retry_at = $2 WHERE id = $1`, p.AfterAttemptID, p.NotBefore)
	case domain.EvMovedToDLQ:
		var p domain.MovedToDLQ
		if p, err = payload[domain.MovedToDLQ](e); err != nil {
			break
		}
		add(`UPDATE delivery_attempts SET is_dlq = 1, dlq_at = $2, next_retry_at = NULL WHERE id = $1`, p.AttemptID, p.DLQAt)
	case domain.EvDestinationCreated, domain.EvDestinationUpdated:
		out, err = followRename(e.Payload, "destination_id", "destination_name")
	case domain.EvConnectionCreated, domain.EvConnectionUpdated:
		out, err = followRename(e.Payload, "connection_id", "connection_name")
	}
	if err != nil {
		return nil, fmt.Errorf("project %s %s into delivery_attempts: %w", e.Type, e.EventID, err)
	}
	return out, nil
}

// followRename returns the statements that write a resource's current name
// into the deliveries and attempts showing it (idCol/nameCol are fixed
// column names, never input).
func followRename(payload []byte, idCol, nameCol string) ([]eventstore.Statement, error) {
	var p struct{ ID, Name string }
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, err
	}
	var out []eventstore.Statement
	for _, table := range []string{"projected_deliveries", "delivery_attempts"} {
		out = append(out, eventstore.Statement{
			SQL:  `UPDATE ` + table + ` SET ` + nameCol + ` = $2 WHERE ` + idCol + ` = $1 AND ` + nameCol + ` IS DISTINCT FROM $2`,
			Args: []any{p.ID, p.Name},
		})
	}
	return out, nil
}

// eventOutcome records a delivery's latest outcome and re-derives its event's status.
func eventOutcome(e eventstore.Event, eventID, outcome string) []eventstore.Statement {
	return []eventstore.Statement{
		{SQL: `INSERT INTO event_delivery_outcomes (delivery_id, event_id, outcome, version) VALUES ($1, $2, $3, $4)
			ON CONFLICT (event_id, delivery_id) DO UPDATE SET outcome = excluded.outcome, version = excluded.version
			WHERE event_delivery_outcomes.version < excluded.version`, Args: []any{e.StreamID, eventID, outcome, e.StreamVersion}},
		{SQL: `UPDATE events_view v SET status = CASE
				WHEN o.dlq > 0 THEN 'failed'
				WHEN o.success >= v.delivery_count THEN 'delivered'
				ELSE 'processing' END
			FROM (SELECT count(*) FILTER (WHERE outcome = 'dlq') AS dlq, count(*) FILTER (WHERE outcome = 'success') AS success
			      FROM event_delivery_outcomes WHERE event_id = $1) o
			WHERE v.id = $1`, Args: []any{eventID}},
	}
}

// payload is e's payload as a T: the value its appender encoded when this
// process appended it (eventstore.ReadFolded), else decoded from the log.
func payload[T any](e eventstore.Event) (T, error) {
	if v, ok := e.Decoded.(T); ok {
		return v, nil
	}
	var p T
	err := json.Unmarshal(e.Payload, &p)
	return p, err
}

const insertPendingSQL = `INSERT INTO delivery_attempts (id, org_id, env_id, delivery_id, event_id, connection_id, destination_id,
		request_url, request_method, status, created_at, attempt_number, trigger_type, connection_name, destination_name, replay_id)
	SELECT $1, $2, $3, d.delivery_id, d.event_id, d.connection_id, d.destination_id, $5, $6, 'pending', $7, $8, $9, d.connection_name, d.destination_name, d.replay_id
	FROM projected_deliveries d WHERE d.delivery_id = $4
	ON CONFLICT (id) DO NOTHING`

func pendingArgs(e eventstore.Event, attemptID, deliveryID string, number int, trigger, url, method string, at any) []any {
	return []any{attemptID, e.OrgID, e.EnvID, deliveryID, url, method, at, number, trigger}
}

// Events returns the statements that fold one event into events_view: the
// ingested event, then its status from its deliveries' outcomes.
func Events(e eventstore.Event) ([]eventstore.Statement, error) {
	switch e.Type {
	case domain.EvEventReceived:
	case domain.EvDeliveryAttempted:
		var p struct { // only what decides the outcome (the rest is the attempt's)
			Status      string `json:"status"`
			EventID     string `json:"event_id"`
			TriggerType string `json:"trigger_type"`
		}
		if d, ok := e.Decoded.(domain.DeliveryAttempted); ok {
			p.Status, p.EventID, p.TriggerType = d.Status, d.EventID, d.TriggerType
		} else if err := json.Unmarshal(e.Payload, &p); err != nil {
			return nil, fmt.Errorf("project %s: %w", e.EventID, err)
		}
		if p.Status != domain.AttemptSuccess || p.EventID == "" || p.TriggerType == domain.TriggerReplay {
			return nil, nil // a failure changes the status only once it reaches the DLQ; replays never do
		}
		return eventOutcome(e, p.EventID, "success"), nil
	case domain.EvMovedToDLQ:
		p, err := payload[domain.MovedToDLQ](e)
		if err != nil {
			return nil, fmt.Errorf("project %s: %w", e.EventID, err)
		}
		if p.EventID == "" {
			return nil, nil
		}
		return eventOutcome(e, p.EventID, "dlq"), nil
	default:
		return nil, nil
	}
	p, err := payload[domain.EventReceived](e)
	if err != nil {
		return nil, fmt.Errorf("project %s: %w", e.EventID, err)
	}
	status := "received"
	if p.Deliveries > 0 {
		status = "processing"
	}
	return []eventstore.Statement{{SQL: `INSERT INTO events_view (id, org_id, env_id, source_id, source_name, source_slug, method, content_type,
			source_ip, payload_size, status, delivery_count, received_at, verification_status, dedup_status, dedup_hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''), NULLIF($9, ''), $10, $11, $12, $13,
			coalesce(NULLIF($14, ''), 'none'), coalesce(NULLIF($15, ''), 'unique'), NULLIF($16, ''))
		ON CONFLICT (id) DO NOTHING`, Args: []any{p.EventID, e.OrgID, e.EnvID, p.SourceID, p.SourceName, p.SourceSlug, p.Method, p.ContentType,
		p.SourceIP, p.BodySize, status, p.Deliveries, p.ReceivedAt, p.VerificationStatus, p.DedupStatus, p.DedupHash}}}, nil
}
