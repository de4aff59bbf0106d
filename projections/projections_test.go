package projections_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/projections"
)

// AllEventTypes lists every persisted event type.
var AllEventTypes = []string{
	domain.EvSourceCreated, domain.EvSourceUpdated, domain.EvSourceDeleted,
	domain.EvDestinationCreated, domain.EvDestinationUpdated, domain.EvDestinationDeleted,
	domain.EvConnectionCreated, domain.EvConnectionUpdated, domain.EvConnectionDeleted, domain.EvAPIKeyCreated,
	domain.EvEventReceived, domain.EvDeliveryRequested, domain.EvDeliveryAttempted,
	domain.EvRetryScheduled, domain.EvRetryRequested, domain.EvMovedToDLQ,
}

// A projection's consumer group reads only the types it declares, so an
// event type it handles but does not declare would be silently skipped.
func TestDeclaredEventTypesCoverWhatProjectionsUse(t *testing.T) {
	payload, _ := json.Marshal(map[string]any{"id": "x", "name": "n", "delivery_id": "d", "attempt_id": "a", "after_attempt_id": "a", "event_id": "e", "status": "success"})
	for _, c := range []struct {
		name  string
		types []string
		apply func(eventstore.Event) ([]eventstore.Statement, error)
	}{
		{"delivery_attempts", projections.DeliveryAttemptsEvents, projections.DeliveryAttempts},
		{"events", projections.EventsEvents, projections.Events},
	} {
		for _, typ := range AllEventTypes {
			stmts, err := c.apply(eventstore.Event{Type: typ, Payload: payload})
			if err != nil {
				t.Fatalf("%s(%s): %v", c.name, typ, err)
			}
			if declared := slices.Contains(c.types, typ); declared != (len(stmts) > 0) {
				t.Errorf("%s: %s declared=%v but produces %d statements", c.name, typ, declared, len(stmts))
			}
		}
	}
}

// The ingest hands the projector EventReceived.WithoutBodies (recent.go):
// it must be exactly what the projector decodes from the log, which leaves
// eventstore.ReceivedPayloadFields out.
func TestReceivedWithoutBodiesIsWhatTheProjectorReads(t *testing.T) {
	full := domain.EventReceived{
		EventID: "e1", SourceID: "s1", SourceName: "shop", SourceSlug: "shop", Method: "POST",
		Headers: map[string][]string{"X-A": {"1"}}, Query: map[string][]string{"q": {"2"}}, RawQuery: "q=2",
		RawQueryB64: "cT0y", HeadersB64: map[string][]string{"X-B": {"/w=="}}, ContentType: "application/json",
		SourceIP: "192.0.2.1", BodyB64: "e30=", BodySize: 2, Deliveries: 3, ReceivedAt: time.Date(2026, 12, 3, 14, 0, 0, 123456789, time.UTC),
		VerificationStatus: "verified", DedupStatus: "unique", DedupHash: "h",
		Skipped: []domain.SkippedRoute{{ConnectionID: "c", DestinationID: "d", Reason: "filtered"}},
	}
	raw, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for _, f := range eventstore.ReceivedPayloadFields {
		if _, ok := fields[f]; !ok {
			t.Errorf("the payload has no %q to leave out", f)
		}
		delete(fields, f)
	}
	read, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	var got domain.EventReceived
	if err := json.Unmarshal(read, &got); err != nil {
		t.Fatal(err)
	}
	if want := full.WithoutBodies(); !reflect.DeepEqual(got, want) {
		t.Errorf("the projector reads\n %+v\nthe ingest hands it\n %+v", got, want)
	}
}
