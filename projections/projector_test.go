package projections_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/projections"
)

// After a batch that was not full the projector waits its Pace, which Wake
// does not cut short and Hurry does: a waiting API call (a manual retry's)
// gets its attempt projected at once.
func TestHurryCutsTheProjectorsPace(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := pgtest.NewPool(t)
	var seen atomic.Int32
	pr := projections.NewProjector(projections.ProjectorParams{Pool: pool, Pace: time.Hour, MaxIdle: time.Hour,
		Projections: []projections.Projection{{Group: "hurry_test", Types: []string{"Noted"},
			Apply: func(eventstore.Event) ([]eventstore.Statement, error) {
				seen.Add(1)
				return nil, nil
			}}}})
	done := make(chan struct{})
	go func() { defer close(done); _ = pr.Run(ctx) }()
	defer func() { cancel(); <-done }()
	store := eventstore.New(nil)
	note := func(stream string) {
		t.Helper()
		if _, err := store.Append(ctx, pool, eventstore.StreamAppend{StreamType: "test", StreamID: stream, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: "Noted", Payload: map[string]int{"n": 1}}}}); err != nil {
			t.Fatal(err)
		}
	}
	note("first")
	pgtest.WaitFor(t, 10*time.Second, "the first event projected (the projector polls from 1 ms when it starts)", func() bool { return seen.Load() == 1 })
	// Now it waits an hour after that batch; only Hurry cuts that short.
	note("second")
	pr.Hurry()
	pgtest.WaitFor(t, 10*time.Second, "the second event projected after Hurry", func() bool { return seen.Load() == 2 })
}
