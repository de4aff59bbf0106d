package eventstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// ReadFolded hands out what this process appended as the appenders' values
// (once), reads the payloads of the other needed events, and none of the
// rest.
func TestReadFoldedReadsOnlyThePayloadsItHasNoValueFor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	eventstore.KeepRecent()
	type body struct {
		N string `json:"n"`
	}
	kept := ev("Kept", body{"kept"})
	kept.ID, kept.Projected = uuid.Must(uuid.NewV7()), body{"kept"}
	cut := ev("Cut", body{"caf\xc3"}) // stored as U+FFFD: not the value
	cut.Projected = body{"caf\xc3"}
	if _, err := s.Append(ctx, pool, appendTo("s", eventstore.NoStream, kept, ev("Other", body{"other"}), ev("Unused", body{"unused"}), cut)); err != nil {
		t.Fatal(err)
	}
	need := func(t string) bool { return t != "Unused" }
	read := func() map[string]eventstore.Event {
		var evs []eventstore.Event
		waitFor(t, 10*time.Second, "the events readable", func() bool {
			var err error
			evs, err = eventstore.ReadFolded(ctx, pool, eventstore.RangeQuery{UntilTx: -1, Limit: 10}, need)
			if err != nil {
				t.Fatal(err)
			}
			return len(evs) == 4
		})
		out := map[string]eventstore.Event{}
		for _, e := range evs {
			out[e.Type] = e
		}
		return out
	}
	payload := func(e eventstore.Event) string {
		var b body
		if len(e.Payload) == 0 {
			return ""
		}
		if err := json.Unmarshal(e.Payload, &b); err != nil {
			t.Fatal(err)
		}
		return b.N
	}
	got := read()
	if e := got["Kept"]; e.Decoded != (body{"kept"}) || e.Payload != nil {
		t.Errorf("kept event: decoded %v, payload %s", e.Decoded, e.Payload)
	}
	if e := got["Other"]; e.Decoded != nil || payload(e) != "other" {
		t.Errorf("other event: decoded %v, payload %s", e.Decoded, e.Payload)
	}
	if e := got["Unused"]; e.Decoded != nil || e.Payload != nil {
		t.Errorf("unused event: decoded %v, payload %s", e.Decoded, e.Payload)
	}
	if e := got["Cut"]; e.Decoded != nil || payload(e) != "caf\ufffd" {
		t.Errorf("event not UTF-8: decoded %v, payload %s", e.Decoded, e.Payload)
	}
	// The same event id appended again with another value (a retried append
	// whose first commit went through) fails, and leaves no value behind.
	again := kept
	again.Projected = body{"other"}
	if _, err := s.Append(ctx, pool, appendTo("s2", eventstore.NoStream, again)); !errors.Is(err, eventstore.ErrDuplicateEvent) {
		t.Fatalf("append of a stored event id: %v", err)
	}
	// Read again (a batch that rolled back), the value is gone: the log's JSON.
	if e := read()["Kept"]; e.Decoded != nil || !strings.Contains(string(e.Payload), `"kept"`) {
		t.Errorf("kept event read again: decoded %v, payload %s", e.Decoded, e.Payload)
	}
}
