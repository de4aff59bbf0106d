package projections_test

import (
	"encoding/json"
	"slices"
	"testing"

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
