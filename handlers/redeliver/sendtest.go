package redeliver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/projections"
)

// SendTestInput is POST /v1/destinations/{id}/test's body (optional).
type SendTestInput struct {
	// Payload is the JSON body to send (default: a hookstream.test event).
	Payload json.RawMessage `json:"payload"`
	// ConnectionID names the route the test event comes through (default:
	// the destination's oldest connection; none: an event of no source).
	ConnectionID *string `json:"connection_id"`
}

// SendTestResult is the test's event, delivery and attempt.
type SendTestResult struct {
	EventID         string              `json:"event_id"`
	DeliveryID      string              `json:"delivery_id"`
	DeliveryAttempt projections.Attempt `json:"delivery_attempt"`
}

// SendTest sends a sample webhook to a destination through the normal
// pipeline: an EventReceived (from the connection's source) with one
// DeliveryRequested to this destination alone, delivered by the engine
// like any webhook (signing, circuit, retries and dead letter per the
// destination's policy). With wait it returns the first attempt's outcome
// (up to the destination's timeout), else the pending attempt.
func (s *Redeliverer) SendTest(ctx context.Context, t domain.Tenant, destinationID string, in SendTestInput, wait bool, rid string) (SendTestResult, error) {
	dest, err := s.reg.GetDestination(ctx, t, destinationID)
	if err != nil {
		return SendTestResult{}, err
	}
	if dest.Status != "active" {
		return SendTestResult{}, domain.Errorf(domain.EConflict, "Destination is %s: a test would not be sent; set its status to active first", dest.Status)
	}
	now := s.now()
	body := []byte(in.Payload)
	if len(body) == 0 || string(body) == "null" {
		body, _ = json.Marshal(map[string]any{"type": "hookstream.test", "message": "A test webhook sent by hookstream",
			"destination_id": dest.ID, "sent_at": kit.ISOTime(now)})
	}
	var connID, connName, srcID, srcName, srcSlug string
	q := `SELECT c.id, c.name, s.id, s.name, s.slug FROM connections c JOIN sources s ON s.id = c.source_id
		WHERE c.destination_id = $1 AND c.org_id = $2 AND c.env_id = $3 AND ($4 = '' OR c.id = $4) ORDER BY c.created_at LIMIT 1`
	want := ""
	if in.ConnectionID != nil {
		want = *in.ConnectionID
		if !kit.ValidID(want) {
			return SendTestResult{}, kit.Invalidf("'connection_id' is not a connection of this destination")
		}
	}
	err = s.pool.QueryRow(ctx, q, dest.ID, t.OrgID, t.EnvID, want).Scan(&connID, &connName, &srcID, &srcName, &srcSlug)
	switch {
	case errors.Is(err, pgx.ErrNoRows) && want != "":
		return SendTestResult{}, kit.Invalidf("'connection_id' is not a connection of this destination")
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return SendTestResult{}, fmt.Errorf("send test: find connection: %w", err)
	}
	eventID, deliveryID, attemptID := kit.NewID(), kit.NewID(), kit.NewID()
	receivedUUID := uuid.Must(uuid.NewV7())
	meta := eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: eventID}
	headers := map[string][]string{"Content-Type": {"application/json"}, "User-Agent": {"hookstream-test"}, "X-Hookstream-Test": {"1"}}
	received := domain.EventReceived{EventID: eventID, SourceID: srcID, SourceName: srcName, SourceSlug: srcSlug, Method: "POST",
		Headers: headers, Query: map[string][]string{}, ContentType: "application/json", BodyB64: base64.StdEncoding.EncodeToString(body),
		BodySize: len(body), Deliveries: 1, ReceivedAt: now, VerificationStatus: "none", DedupStatus: "unique"}
	requested := domain.DeliveryRequested{DeliveryID: deliveryID, EventID: eventID, ReceivedUUID: receivedUUID.String(),
		ConnectionID: connID, ConnectionName: connName, DestinationID: dest.ID, DestinationName: dest.Name, RequestURL: dest.URL,
		RequestMethod: dest.Method, AttemptID: attemptID, TriggerType: domain.TriggerInitial, RequestedAt: now}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := s.store.AppendMany(ctx, tx,
			eventstore.StreamAppend{StreamType: domain.StreamEvent, StreamID: eventID, OrgID: t.OrgID, EnvID: t.EnvID, Expected: eventstore.NoStream,
				Events: []eventstore.NewEvent{{ID: receivedUUID, Type: domain.EvEventReceived, Payload: received, Metadata: meta}}},
			eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: t.OrgID, EnvID: t.EnvID, Expected: eventstore.NoStream,
				Events: []eventstore.NewEvent{{Type: domain.EvDeliveryRequested, Payload: requested,
					Metadata: eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: eventID, CausationID: receivedUUID.String()}}}},
		); err != nil {
			return err
		}
		if err := jobs.Insert(ctx, tx, []jobs.NewJob{{DeliveryID: deliveryID, OrgID: t.OrgID, EnvID: t.EnvID, EventID: eventID,
			ConnectionID: connID, DestinationID: dest.ID, ReceivedUUID: receivedUUID.String(), AttemptID: attemptID,
			Trigger: domain.TriggerInitial, Due: now}}); err != nil {
			return err
		}
		return jobs.Notify(ctx, tx)
	})
	if err != nil {
		return SendTestResult{}, fmt.Errorf("send test: record: %w", err)
	}
	res := SendTestResult{EventID: eventID, DeliveryID: deliveryID}
	// (On an error the result still names the stored event and delivery.)
	res.DeliveryAttempt, err = s.awaitAttempt(ctx, t, attemptID, wait, time.Duration(dest.TimeoutMS)*time.Millisecond)
	if err != nil {
		return res, fmt.Errorf("send test: %w", err)
	}
	return res, nil
}
