package projections_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/projections"
)

// After a batch that was not full the projector waits its Pace, which Wake
// does not cut short and Hurry does: a waiting API call (a manual retry's)
// gets its attempt projected at once.
func TestHurryCutsTheProjectorsPace(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	var seen atomic.Int32
	pr := projections.NewProjector(projections.ProjectorParams{Pool: pool, Pace: time.Hour, MaxIdle: time.Hour,
		Projections: []projections.Projection{{Group: "hurry_test", Types: []string{"Noted"},
			Apply: func(eventstore.Event) ([]eventstore.Statement, error) {
				seen.Add(1)
				return nil, nil
			}}}})
	runProjector(t, pr)
	appendNoted(t, pool, "first", 1)
	pgtest.WaitFor(t, 10*time.Second, "the first event projected (the projector polls from 1 ms when it starts)", func() bool { return seen.Load() == 1 })
	// Now it waits an hour after that batch; only Hurry cuts that short.
	appendNoted(t, pool, "second", 1)
	pr.Hurry()
	pgtest.WaitFor(t, 10*time.Second, "the second event projected after Hurry", func() bool { return seen.Load() == 2 })
}

// The projector's transaction carries projectorSettings (set by the
// statement that locks the offsets): the statements a projection returns run
// with sequential scans off, on their generic plans and with an asynchronous
// commit, one event alone (in its savepoint) or a batch.
func TestProjectorTransactionHasItsSettings(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := pgtest.NewPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE seen_settings (n int, seqscan text, sync text, plans text)`); err != nil {
		t.Fatal(err)
	}
	pr := projections.NewProjector(projections.ProjectorParams{Pool: pool, Pace: time.Millisecond, MaxIdle: 10 * time.Millisecond,
		Projections: []projections.Projection{{Group: "settings_test", Types: []string{"Noted"},
			Apply: func(e eventstore.Event) ([]eventstore.Statement, error) {
				return []eventstore.Statement{{SQL: `INSERT INTO seen_settings SELECT $1, current_setting('enable_seqscan'), current_setting('synchronous_commit'),
					current_setting('plan_cache_mode')`,
					Args: []any{int(e.StreamVersion)}}}, nil
			}}}})
	runProjector(t, pr)
	appendNoted(t, pool, "one", 1)
	pgtest.WaitFor(t, 10*time.Second, "the first event projected", func() bool {
		var n int
		return pool.QueryRow(ctx, `SELECT count(*) FROM seen_settings`).Scan(&n) == nil && n == 1
	})
	appendNoted(t, pool, "two", 3)
	pgtest.WaitFor(t, 10*time.Second, "the batch projected", func() bool {
		var n int
		return pool.QueryRow(ctx, `SELECT count(*) FROM seen_settings`).Scan(&n) == nil && n == 4
	})
	rows, _ := pool.Query(ctx, `SELECT n, seqscan, sync, plans FROM seen_settings`)
	type seen struct {
		n                    int
		seqscan, sync, plans string
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seen, error) {
		var s seen
		return s, r.Scan(&s.n, &s.seqscan, &s.sync, &s.plans)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		if s.seqscan != "off" || s.sync != "off" || s.plans != "force_generic_plan" {
			t.Errorf("event %d was projected with enable_seqscan=%s, synchronous_commit=%s, plan_cache_mode=%s; want off, off, force_generic_plan",
				s.n, s.seqscan, s.sync, s.plans)
		}
	}
}

// After a batch that was not full, the next batch may read twice as many
// events: under load, what a Pace gathers is read in one batch instead of
// being cut into BatchSize pieces (a cut between a webhook and its
// delivery writes their rows twice: pending, then updated).
func TestProjectorReadsWhatAPaceGatheredInOneBatch(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	var mu sync.Mutex
	var batches []int
	pr := projections.NewProjector(projections.ProjectorParams{Pool: pool, BatchSize: 2, MaxBatchSize: 64, Pace: 50 * time.Millisecond,
		MaxIdle: 20 * time.Millisecond,
		Projections: []projections.Projection{{Group: "pace_test", Types: []string{"Noted"},
			Apply: func(eventstore.Event) ([]eventstore.Statement, error) { return nil, nil },
			Batch: func(evs []eventstore.Event) ([]eventstore.Statement, error) {
				mu.Lock()
				defer mu.Unlock()
				if len(evs) > 0 {
					batches = append(batches, len(evs))
				}
				return nil, nil
			}}}})
	runProjector(t, pr)
	seen := func() (n int, bs []int) {
		mu.Lock()
		defer mu.Unlock()
		for _, b := range batches {
			n += b
		}
		return n, append([]int(nil), batches...)
	}
	// Five events at once: a full batch of 2, then 3 of the 4 the next may
	// read (not full), so the one after may read 6.
	appendNoted(t, pool, "first", 5)
	pgtest.WaitFor(t, 10*time.Second, "the first five events projected", func() bool { n, _ := seen(); return n == 5 })
	// Six more: one batch, whether they came during the Pace or after it
	// (an empty read keeps the limit). Cut into BatchSize pieces they
	// would come as 2 and 4.
	appendNoted(t, pool, "second", 6)
	pgtest.WaitFor(t, 10*time.Second, "the next six events projected", func() bool { n, _ := seen(); return n == 11 })
	if _, bs := seen(); bs[len(bs)-1] != 6 {
		t.Fatalf("batches %v: the six events that came after a batch of 3 were not read in one batch", bs)
	}
}

// runProjector runs pr until the test ends.
func runProjector(t *testing.T, pr *projections.Projector) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = pr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// appendNoted appends n "Noted" events to a new stream in one transaction.
func appendNoted(t *testing.T, pool *pgxpool.Pool, stream string, n int) {
	t.Helper()
	evs := make([]eventstore.NewEvent, n)
	for i := range evs {
		evs[i] = eventstore.NewEvent{Type: "Noted", Payload: map[string]int{"n": i}}
	}
	if _, err := eventstore.New(nil).Append(context.Background(), pool, eventstore.StreamAppend{StreamType: "test", StreamID: stream,
		Expected: eventstore.NoStream, Events: evs}); err != nil {
		t.Fatal(err)
	}
}
