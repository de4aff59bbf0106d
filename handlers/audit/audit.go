// Package audit is the causal history of an attempt, a delivery or an
// event, read from the log: what `hookstream audit` prints and the
// dashboard's timeline shows.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// Request names what to audit: Kind is attempt, delivery or event.
type Request struct {
	Kind, ID string
	AsOf     *time.Time
}

// Event is one event of an audit trail.
type Event struct {
	Time          time.Time      `json:"time"`
	Position      int64          `json:"position"`
	StreamType    string         `json:"stream_type"`
	StreamID      string         `json:"stream_id"`
	Version       int64          `json:"version"`
	Type          string         `json:"type"`
	Actor         string         `json:"actor"`
	CorrelationID string         `json:"correlation_id"`
	CausationID   string         `json:"causation_id"`
	RequestID     string         `json:"request_id"`
	Summary       string         `json:"summary"`
	Payload       map[string]any `json:"payload"` // the stored payload, the webhook body left out
}

// Delivery is a delivery folded from its events (up to --as-of).
type Delivery struct {
	DeliveryID      string          `json:"delivery_id"`
	EventID         string          `json:"event_id"`
	DestinationID   string          `json:"destination_id"`
	DestinationName string          `json:"destination_name"`
	ConnectionID    string          `json:"connection_id"`
	ConnectionName  string          `json:"connection_name"`
	Status          string          `json:"status"` // pending | retry_scheduled | manual_retry_pending | delivered | dead_lettered | failed
	Attempts        int             `json:"attempts"`
	LastAttempt     *AttemptOutcome `json:"last_attempt"`
	NextAttempt     *NextAttempt    `json:"next_attempt"`
	Version         int64           `json:"version"`
}

type AttemptOutcome struct {
	ID             string    `json:"id"`
	Number         int       `json:"number"`
	Trigger        string    `json:"trigger"`
	Status         string    `json:"status"`
	ResponseStatus *int      `json:"response_status"`
	Error          *string   `json:"error"`
	At             time.Time `json:"at"`
}

type NextAttempt struct {
	ID      string    `json:"id"`
	Number  int       `json:"number"`
	Trigger string    `json:"trigger"`
	Due     time.Time `json:"due"`
}

// Report is what audit prints.
type Report struct {
	Subject    string     `json:"subject"`
	AsOf       *time.Time `json:"as_of"`
	Deliveries []Delivery `json:"deliveries"`
	Events     []Event    `json:"events"`
}

// Build gathers the causal history of an attempt, a delivery or an
// event: the event's stream and every delivery stream involved, in commit
// order, and each delivery's state folded from them.
func Build(ctx context.Context, db eventstore.DBTX, req Request) (Report, error) {
	rep := Report{Subject: req.Kind + " " + req.ID, AsOf: req.AsOf, Deliveries: []Delivery{}, Events: []Event{}}
	store := eventstore.New(nil)
	deliveries, err := deliveries(ctx, db, req)
	if err != nil {
		return rep, err
	}
	eventID := ""
	if req.Kind == "event" {
		eventID = req.ID
	}
	streams, err := store.LoadMany(ctx, db, deliveries)
	if err != nil {
		return rep, err
	}
	for _, d := range deliveries {
		if len(streams[d]) == 0 || streams[d][0].StreamType != domain.StreamDelivery {
			return rep, fmt.Errorf("audit: no delivery %q", d)
		}
		var first domain.DeliveryRequested
		if err := json.Unmarshal(streams[d][0].Payload, &first); err == nil && eventID == "" {
			eventID = first.EventID
		}
	}
	var all []eventstore.Event
	if eventID != "" {
		evs, err := store.Load(ctx, db, eventID)
		if err != nil {
			return rep, err
		}
		if req.Kind == "event" && (len(evs) == 0 || evs[0].StreamType != domain.StreamEvent) {
			return rep, fmt.Errorf("audit: no event %q", req.ID)
		}
		all = append(all, evs...)
	}
	for _, d := range deliveries {
		all = append(all, streams[d]...)
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i].Position(), all[j].Position()
		return a.TransactionID < b.TransactionID || (a.TransactionID == b.TransactionID && a.GlobalPosition < b.GlobalPosition)
	})
	for _, e := range all {
		if req.AsOf != nil && e.RecordedAt.After(*req.AsOf) {
			continue
		}
		var payload map[string]any
		if err := json.Unmarshal(e.Payload, &payload); err != nil {
			payload = map[string]any{"unreadable_payload": err.Error()}
		}
		delete(payload, "body_b64")
		rep.Events = append(rep.Events, Event{Time: e.RecordedAt.UTC(), Position: e.GlobalPosition, StreamType: e.StreamType, StreamID: e.StreamID,
			Version: e.StreamVersion, Type: e.Type, Actor: e.Metadata.Actor, CorrelationID: e.Metadata.CorrelationID,
			CausationID: e.Metadata.CausationID, RequestID: e.Metadata.RequestID, Summary: Summarize(e), Payload: payload})
	}
	for _, d := range deliveries {
		st, ok, err := fold(streams[d], req.AsOf)
		if err != nil {
			return rep, err
		}
		if ok {
			rep.Deliveries = append(rep.Deliveries, st)
		}
	}
	return rep, nil
}

// fold folds a delivery stream up to asOf (false when it did not exist yet).
func fold(evs []eventstore.Event, asOf *time.Time) (Delivery, bool, error) {
	agg := &domain.Delivery{}
	var st Delivery
	for _, e := range evs {
		if asOf != nil && e.RecordedAt.After(*asOf) {
			break
		}
		if err := agg.Apply(e.StreamVersion, e.Type, e.Payload); err != nil {
			return st, false, err
		}
		if e.Type == domain.EvDeliveryAttempted {
			var a domain.DeliveryAttempted
			if err := json.Unmarshal(e.Payload, &a); err != nil {
				return st, false, err
			}
			st.Attempts++
			st.LastAttempt = &AttemptOutcome{ID: a.AttemptID, Number: a.AttemptNumber, Trigger: a.TriggerType, Status: a.Status,
				ResponseStatus: a.ResponseStatus, Error: a.Error, At: a.StartedAt.UTC()}
		}
	}
	if agg.Version() == 0 {
		return st, false, nil
	}
	r := agg.Requested()
	st.DeliveryID, st.EventID, st.Version = r.DeliveryID, r.EventID, agg.Version()
	st.DestinationID, st.DestinationName, st.ConnectionID, st.ConnectionName = r.DestinationID, r.DestinationName, r.ConnectionID, r.ConnectionName
	if n := agg.Next(); n != nil {
		st.NextAttempt = &NextAttempt{ID: n.ID, Number: n.Number, Trigger: n.Trigger, Due: n.Due.UTC()}
	}
	switch agg.Terminal() {
	case domain.AttemptSuccess:
		st.Status = "delivered"
	case "dlq":
		st.Status = "dead_lettered"
	case domain.AttemptFailed:
		st.Status = "failed"
	default:
		switch {
		case st.NextAttempt == nil:
			st.Status = "failed"
		case st.NextAttempt.Trigger == domain.TriggerRetry:
			st.Status = "retry_scheduled"
		case st.NextAttempt.Trigger == domain.TriggerManual:
			st.Status = "manual_retry_pending"
		default:
			st.Status = "pending"
		}
	}
	return st, true, nil
}

// queryStrings returns a one-column query's rows.
func queryStrings(ctx context.Context, db eventstore.DBTX, sql string, args ...any) ([]string, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// deliveries are the delivery streams an audit covers: an attempt's
// delivery, the delivery named, or every delivery of an event, found in the
// read models and, when they have not caught up, in the log itself.
func deliveries(ctx context.Context, db eventstore.DBTX, req Request) ([]string, error) {
	var deliveries []string
	switch req.Kind {
	case "attempt":
		var d string
		err := db.QueryRow(ctx, `SELECT delivery_id FROM delivery_attempts WHERE id = $1`, req.ID).Scan(&d)
		if errors.Is(err, pgx.ErrNoRows) {
			// Not projected (yet): the log itself names every attempt id.
			err = db.QueryRow(ctx, `SELECT stream_id FROM events WHERE stream_type = $2
				AND (payload->>'attempt_id' = $1 OR payload->>'next_attempt_id' = $1) LIMIT 1`, req.ID, domain.StreamDelivery).Scan(&d)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("audit: no attempt %q", req.ID)
		}
		if err != nil {
			return nil, err
		}
		return []string{d}, nil
	case "delivery":
		return []string{req.ID}, nil
	case "event":
		var err error
		if deliveries, err = queryStrings(ctx, db, `SELECT delivery_id FROM delivery_jobs WHERE event_id = $1
			UNION SELECT delivery_id FROM delivery_attempts WHERE event_id = $1 ORDER BY 1`, req.ID); err != nil {
			return nil, err
		}
		if len(deliveries) == 0 {
			// No job rows (an event no connection matched, or lost scheduler
			// state): the log names the event's deliveries itself.
			if deliveries, err = queryStrings(ctx, db, `SELECT stream_id FROM events WHERE event_type = $2 AND payload->>'event_id' = $1
				ORDER BY global_position`, req.ID, domain.EvDeliveryRequested); err != nil {
				return nil, err
			}
		}
	}
	return deliveries, nil
}
