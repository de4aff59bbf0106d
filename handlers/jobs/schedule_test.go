package jobs

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// The scheduler's consumer group reads only ScheduleEvents; every type that
// schedule acts on must be declared there.
func TestScheduleEventsCoverWhatScheduleUses(t *testing.T) {
	payload, _ := json.Marshal(map[string]any{"delivery_id": "d"})
	for _, typ := range []string{
		domain.EvSourceCreated, domain.EvDestinationUpdated, domain.EvConnectionUpdated, domain.EvAPIKeyCreated,
		domain.EvEventReceived, domain.EvDeliveryRequested, domain.EvDeliveryAttempted,
		domain.EvRetryScheduled, domain.EvRetryRequested, domain.EvMovedToDLQ,
	} {
		stmts, err := Schedule(eventstore.Event{Type: typ, Payload: payload})
		if err != nil {
			t.Fatalf("Schedule(%s): %v", typ, err)
		}
		if declared := slices.Contains(ScheduleEvents, typ); declared != (len(stmts) > 0) {
			t.Errorf("%s declared=%v but produces %d statements", typ, declared, len(stmts))
		}
	}
}
