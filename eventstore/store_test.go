package eventstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/projections"
)

func ev(typ string, payload any) eventstore.NewEvent {
	return eventstore.NewEvent{Type: typ, Payload: payload, Metadata: eventstore.Metadata{Actor: "test", CorrelationID: "corr-1", RequestID: "req_1"}}
}

func appendTo(stream string, expected int64, evs ...eventstore.NewEvent) eventstore.StreamAppend {
	return eventstore.StreamAppend{StreamType: "test", StreamID: stream, Expected: expected, OrgID: "org", EnvID: "env", Events: evs}
}

// waitFor polls cond until it holds or the deadline passes.
var waitFor = pgtest.WaitFor

func TestAppendAndLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)

	got, err := s.Append(ctx, pool, appendTo("s1", eventstore.NoStream, ev("A", map[string]int{"n": 1}), ev("B", map[string]int{"n": 2})))
	if err != nil {
		t.Fatal(err)
	}
	if got[0].StreamVersion != 1 || got[1].StreamVersion != 2 || got[0].GlobalPosition >= got[1].GlobalPosition {
		t.Fatalf("versions/positions = %+v", got)
	}
	if _, err := s.Append(ctx, pool, appendTo("s1", eventstore.NoStream, ev("C", nil))); !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("NoStream on an existing stream: err = %v, want ErrConcurrency", err)
	}
	if _, err := s.Append(ctx, pool, appendTo("s1", 5, ev("C", nil))); !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("expected version ahead of the stream: err = %v, want ErrConcurrency", err)
	}
	if _, err := s.Append(ctx, pool, appendTo("s1", eventstore.AnyVersion, ev("C", nil))); err != nil {
		t.Fatal(err)
	}
	loaded, err := s.Load(ctx, pool, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 3 || loaded[2].Type != "C" || loaded[2].StreamVersion != 3 {
		t.Fatalf("loaded %+v", loaded)
	}
	// At an exact version the versions are numbered before the statement
	// (appendKnownSQL): the next ones follow, a stale version is refused
	// whether the stream moved one or more past it, and with another stream
	// in the call nothing of either is stored.
	got, err = s.Append(ctx, pool, appendTo("s1", 3, ev("D", nil), ev("E", nil)))
	if err != nil || len(got) != 2 || got[0].StreamVersion != 4 || got[1].StreamVersion != 5 {
		t.Fatalf("append at version 3: %+v, %v", got, err)
	}
	for _, stale := range []int64{4, 2} {
		if _, err := s.AppendMany(ctx, pool, appendTo("s1", stale, ev("F", nil)), appendTo("s2", eventstore.NoStream, ev("G", nil))); !errors.Is(err, eventstore.ErrConcurrency) {
			t.Fatalf("version %d of a stream at 5: err = %v, want ErrConcurrency", stale, err)
		}
	}
	if s2, err := s.Load(ctx, pool, "s2"); err != nil || len(s2) != 0 {
		t.Fatalf("s2 after refused appends: %+v, %v", s2, err)
	}
	if loaded[0].Metadata != (eventstore.Metadata{Actor: "test", CorrelationID: "corr-1", RequestID: "req_1"}) {
		t.Fatalf("metadata = %+v", loaded[0].Metadata)
	}
	var p map[string]int
	if err := json.Unmarshal(loaded[1].Payload, &p); err != nil || p["n"] != 2 {
		t.Fatalf("payload = %s (%v)", loaded[1].Payload, err)
	}
}

func TestAppendDuplicateEventIDStoredOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	first, err := s.Append(ctx, pool, appendTo("dup", eventstore.NoStream, ev("A", nil)))
	if err != nil {
		t.Fatal(err)
	}
	again := ev("A", nil)
	again.ID = first[0].EventID
	if _, err := s.Append(ctx, pool, appendTo("dup", eventstore.AnyVersion, again)); !errors.Is(err, eventstore.ErrDuplicateEvent) {
		t.Fatalf("err = %v, want ErrDuplicateEvent", err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE event_id = $1", first[0].EventID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("stored %d times (%v)", n, err)
	}
}

func TestAppendManyIsAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	if _, err := s.Append(ctx, pool, appendTo("b", eventstore.NoStream, ev("A", nil))); err != nil {
		t.Fatal(err)
	}
	_, err := s.AppendMany(ctx, pool, appendTo("a", eventstore.NoStream, ev("A", nil)), appendTo("b", eventstore.NoStream, ev("B", nil)))
	if !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("err = %v, want ErrConcurrency", err)
	}
	if evs, _ := s.Load(ctx, pool, "a"); len(evs) != 0 {
		t.Fatalf("stream a got %d events from a failed append", len(evs))
	}
}

// One stream twice in one call at the same expected version is two writers
// that decided from one state (found by the chaos run: two lanes of one
// engine held the same delivery after its lease ran out, and their records
// shared a group): refused, nothing stored, where the statement had
// numbered the second after the first. Several AnyVersion appends to one
// stream still go in order.
func TestAppendManyRefusesOneStreamTwiceAtAnExpectedVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	if _, err := s.Append(ctx, pool, appendTo("d", eventstore.NoStream, ev("Requested", nil))); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]int64{{1, 1}, {eventstore.NoStream, eventstore.NoStream}, {1, eventstore.AnyVersion}, {eventstore.AnyVersion, 1}} {
		stream := "d"
		if pair[0] == eventstore.NoStream {
			stream = "new"
		}
		_, err := s.AppendMany(ctx, pool, appendTo("other", eventstore.AnyVersion, ev("X", nil)),
			appendTo(stream, pair[0], ev("Attempted", nil)), appendTo(stream, pair[1], ev("Attempted", nil)))
		if !errors.Is(err, eventstore.ErrConcurrency) {
			t.Fatalf("stream %s twice, expected %d and %d: err = %v, want ErrConcurrency", stream, pair[0], pair[1], err)
		}
	}
	for _, stream := range []string{"d", "new", "other"} {
		evs, err := s.Load(ctx, pool, stream)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]int{"d": 1}[stream]; len(evs) != want {
			t.Fatalf("stream %s holds %d events after refused appends, want %d", stream, len(evs), want)
		}
	}
	if _, err := s.AppendMany(ctx, pool, appendTo("any", eventstore.AnyVersion, ev("A", nil)), appendTo("any", eventstore.AnyVersion, ev("B", nil))); err != nil {
		t.Fatalf("two AnyVersion appends to one stream: %v", err)
	}
	evs, err := s.Load(ctx, pool, "any")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Type != "A" || evs[1].Type != "B" || evs[1].StreamVersion != 2 {
		t.Fatalf("AnyVersion appends: %+v", evs)
	}
}

func TestEventsAreImmutable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	if _, err := eventstore.New(nil).Append(ctx, pool, appendTo("imm", eventstore.NoStream, ev("A", nil))); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"UPDATE events SET event_type = 'X'",
		"DELETE FROM events",
		"TRUNCATE events",
	} {
		if _, err := pool.Exec(ctx, stmt); err == nil {
			t.Errorf("%s succeeded; stored events must be immutable", stmt)
		}
	}
	var typ string
	if err := pool.QueryRow(ctx, "SELECT event_type FROM events").Scan(&typ); err != nil || typ != "A" {
		t.Fatalf("event after tampering attempts: %q, %v", typ, err)
	}
}

func TestConcurrentAppendsOneWinnerPerVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	const rounds, writers = 10, 16
	for v := int64(0); v < rounds; v++ {
		var wins, conflicts atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := s.Append(ctx, pool, appendTo("race", v, ev("Raced", map[string]int{"writer": w})))
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, eventstore.ErrConcurrency):
					conflicts.Add(1)
				default:
					t.Errorf("writer %d: %v", w, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != writers-1 {
			t.Fatalf("version %d: %d wins, %d conflicts; want 1 and %d", v+1, wins.Load(), conflicts.Load(), writers-1)
		}
	}
	evs, err := s.Load(ctx, pool, "race")
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range evs {
		if e.StreamVersion != int64(i+1) {
			t.Fatalf("event %d has version %d", i, e.StreamVersion)
		}
	}
	if len(evs) != rounds {
		t.Fatalf("%d events, want %d", len(evs), rounds)
	}
}

type counted struct {
	mu   sync.Mutex
	seen map[string]int   // event id -> times seen
	last map[string]int64 // stream -> last version seen
	errs []string
}

func (c *counted) record(msg *message.Message) {
	e, err := eventstore.EventFromMessage(msg)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.errs = append(c.errs, err.Error())
		return
	}
	c.seen[e.EventID.String()]++
	if e.StreamVersion != c.last[e.StreamID]+1 {
		c.errs = append(c.errs, fmt.Sprintf("stream %s: version %d after %d", e.StreamID, e.StreamVersion, c.last[e.StreamID]))
	}
	c.last[e.StreamID] = e.StreamVersion
}

func subscribe(t *testing.T, pool *pgxpool.Pool, p eventstore.SubscriberParams) <-chan *message.Message {
	t.Helper()
	sub, err := eventstore.NewSubscriber(pool, p, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, eventstore.Topic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = sub.Close() })
	return msgs
}

func TestConsumerGroupSeesEveryEventOnceInStreamOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	msgs := subscribe(t, pool, eventstore.SubscriberParams{ConsumerGroup: "test-all", PollInterval: 5 * time.Millisecond})
	c := &counted{seen: map[string]int{}, last: map[string]int64{}}
	go func() {
		for m := range msgs {
			c.record(m)
			m.Ack()
		}
	}()

	const writers, streams, perWriter = 8, 20, 60
	var wg sync.WaitGroup
	var appended atomic.Int64
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				stream := fmt.Sprintf("stream-%d", (w*perWriter+i)%streams)
				for {
					_, err := s.Append(ctx, pool, appendTo(stream, eventstore.AnyVersion, ev("E", map[string]int{"w": w, "i": i})))
					if errors.Is(err, eventstore.ErrConcurrency) {
						continue // lost the race for the next version: retry
					}
					if err != nil {
						t.Error(err)
						return
					}
					appended.Add(1)
					break
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, 30*time.Second, "consumer to see every event", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.seen) == int(appended.Load())
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, n := range c.seen {
		if n != 1 {
			t.Errorf("event %s seen %d times", id, n)
		}
	}
	for _, e := range c.errs {
		t.Error(e)
	}
	if appended.Load() != writers*perWriter {
		t.Fatalf("appended %d, want %d", appended.Load(), writers*perWriter)
	}
}

// countingBackoff counts empty polls so a test can wait until the consumer
// has looked at the table again.
type countingBackoff struct {
	wsql.BackoffManager
	empty atomic.Int64
}

func (b *countingBackoff) HandleError(l watermill.LoggerAdapter, noMsg bool, err error) time.Duration {
	if noMsg {
		b.empty.Add(1)
	}
	return b.BackoffManager.HandleError(l, noMsg, err)
}

func TestLateCommitterIsNeitherSkippedNorPassed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	backoff := &countingBackoff{BackoffManager: wsql.NewDefaultBackoffManager(5*time.Millisecond, 20*time.Millisecond)}
	msgs := subscribe(t, pool, eventstore.SubscriberParams{ConsumerGroup: "test-late", PollInterval: 5 * time.Millisecond, Backoff: backoff})
	var mu sync.Mutex
	var order []string
	go func() {
		for m := range msgs {
			e, _ := eventstore.EventFromMessage(m)
			mu.Lock()
			order = append(order, e.Type)
			mu.Unlock()
			m.Ack()
		}
	}()
	seen := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= n }
	}

	if _, err := s.Append(ctx, pool, appendTo("c", eventstore.NoStream, ev("Before", nil))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the first event", seen(1))

	// The late transaction takes its xid (and a smaller global position) first…
	late, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx) //nolint:errcheck
	if _, err := s.Append(ctx, late, appendTo("late", eventstore.NoStream, ev("Late", nil))); err != nil {
		t.Fatal(err)
	}
	// …then a later transaction commits before it.
	if _, err := s.Append(ctx, pool, appendTo("early", eventstore.NoStream, ev("Early", nil))); err != nil {
		t.Fatal(err)
	}
	// Let the consumer poll several times while the late transaction is open.
	polls := backoff.empty.Load()
	waitFor(t, 10*time.Second, "the consumer to poll again", func() bool { return backoff.empty.Load() >= polls+3 })
	mu.Lock()
	if len(order) != 1 {
		t.Fatalf("consumer passed an open transaction: saw %v", order)
	}
	mu.Unlock()
	if evs, err := s.ReadAll(ctx, pool, eventstore.Position{}, 10); err != nil || len(evs) != 1 {
		t.Fatalf("ReadAll with a transaction open returned %d events (%v), want 1", len(evs), err)
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "all three events", seen(3))
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != "[Before Late Early]" {
		t.Fatalf("order = %v, want [Before Late Early] (commit order)", order)
	}
	evs, err := s.ReadAll(ctx, pool, eventstore.Position{}, 10)
	if err != nil || len(evs) != 3 || evs[1].Type != "Late" {
		t.Fatalf("ReadAll = %+v, %v", evs, err)
	}
	rest, err := s.ReadAll(ctx, pool, evs[1].Position(), 10)
	if err != nil || len(rest) != 1 || rest[0].Type != "Early" {
		t.Fatalf("ReadAll after the late event = %+v, %v", rest, err)
	}
}

func TestSavepointHandlerRecoversAfterSQLError(t *testing.T) {
	t.Parallel()
	helpers := map[string]func(ctx context.Context, call int32, id string) error{
		"InSavepoint": func(ctx context.Context, call int32, id string) error {
			return eventstore.InSavepoint(ctx, func(tx pgx.Tx) error {
				if call == 1 {
					_, err := tx.Exec(ctx, "INSERT INTO handled (event_id) VALUES ('not-a-uuid')")
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO handled (event_id) VALUES ($1)", id)
				return err
			})
		},
		"ExecInSavepoint": func(ctx context.Context, call int32, id string) error {
			arg := id
			if call == 1 {
				arg = "not-a-uuid"
			}
			return eventstore.ExecInSavepoint(ctx, []eventstore.Statement{
				{SQL: "SELECT 1"},
				{SQL: "INSERT INTO handled (event_id) VALUES ($1::uuid)", Args: []any{arg}},
			})
		},
	}
	for name, handle := range helpers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.NewPool(t)
			if _, err := pool.Exec(ctx, "CREATE TABLE handled (event_id uuid PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			const ackDeadline = 30 * time.Second
			msgs := subscribe(t, pool, eventstore.SubscriberParams{ConsumerGroup: "test-savepoint", PollInterval: 5 * time.Millisecond, AckDeadline: ackDeadline})
			var calls atomic.Int32
			go func() {
				for m := range msgs {
					if err := handle(m.Context(), calls.Add(1), m.UUID); err != nil {
						m.Nack()
						continue
					}
					m.Ack()
				}
			}()
			start := time.Now()
			if _, err := eventstore.New(nil).Append(ctx, pool, appendTo("sp", eventstore.NoStream, ev("A", nil))); err != nil {
				t.Fatal(err)
			}
			var n int
			waitFor(t, ackDeadline/3, "the redelivered message to commit", func() bool {
				return pool.QueryRow(ctx, "SELECT count(*) FROM handled").Scan(&n) == nil && n == 1
			})
			if calls.Load() != 2 {
				t.Fatalf("handler ran %d times, want 2 (one failure, one success)", calls.Load())
			}
			t.Logf("recovered %s after the failed attempt (ack deadline %s)", time.Since(start).Round(time.Millisecond), ackDeadline)
		})
	}
}

func TestPublishingThroughWatermillIsRefused(t *testing.T) {
	t.Parallel()
	_, err := eventstore.SchemaAdapter{}.InsertQuery(wsql.InsertQueryParams{Topic: eventstore.Topic, Msgs: message.Messages{message.NewMessage("x", []byte("{}"))}})
	if !errors.Is(err, eventstore.ErrPublishRefused) {
		t.Fatalf("err = %v, want ErrPublishRefused", err)
	}
	pool := pgtest.NewPool(t)
	pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{SchemaAdapter: eventstore.SchemaAdapter{}}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(eventstore.Topic, message.NewMessage("x", []byte("{}"))); err == nil {
		t.Fatal("publish succeeded")
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&n); err != nil || n != 0 {
		t.Fatalf("events after refused publish: %d (%v)", n, err)
	}
}

// A handler must be able to update a row that another transaction changed
// after the consumer's batch began (the scheduler and the delivery handler
// both write delivery_jobs). Under REPEATABLE READ that is a serialization
// failure that repeats until the ack deadline while the batch pins the xmin
// horizon for every consumer.
func TestHandlerCanUpdateRowsChangedAfterBatchStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	if _, err := pool.Exec(ctx, "CREATE TABLE jobs (id int PRIMARY KEY, version int NOT NULL); INSERT INTO jobs VALUES (1, 1)"); err != nil {
		t.Fatal(err)
	}
	msgs := subscribe(t, pool, eventstore.SubscriberParams{ConsumerGroup: "test-rc", PollInterval: 5 * time.Millisecond})
	var calls atomic.Int32
	result := make(chan error, 1)
	go func() {
		for m := range msgs {
			if calls.Add(1) == 1 {
				// Another writer moves the row on after the batch's snapshot…
				if _, err := pool.Exec(ctx, "UPDATE jobs SET version = 3 WHERE id = 1"); err != nil {
					result <- err
					return
				}
			}
			// …and the handler's version-guarded write must see it, not fail.
			err := eventstore.ExecInSavepoint(m.Context(), []eventstore.Statement{{SQL: "UPDATE jobs SET version = 2 WHERE id = 1 AND version < 2"}})
			if err != nil {
				m.Nack()
				if calls.Load() >= 3 {
					result <- err
					return
				}
				continue
			}
			m.Ack()
			result <- nil
			return
		}
	}()
	if _, err := eventstore.New(nil).Append(ctx, pool, appendTo("rc", eventstore.NoStream, ev("A", nil))); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("handler could not write after a concurrent update (%d tries): %v", calls.Load(), err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("handler never finished")
	}
	var v int
	if err := pool.QueryRow(ctx, "SELECT version FROM jobs WHERE id = 1").Scan(&v); err != nil || v != 3 {
		t.Fatalf("version = %d (%v), want 3: the guard must keep the newer write", v, err)
	}
}

// A group whose types have a partial index reads only those events, once and
// in order, through a range scan of that index: the scheduler's read costs
// nothing per event of the other types.
func TestIndexedTypesReadThroughThePartialIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	want := projections.SchedulerLiveEvents
	var ids []string
	for i := 0; i < 200; i++ {
		typ := "Other"
		if i%10 == 3 {
			typ = want[0]
		}
		got, err := s.Append(ctx, pool, appendTo(fmt.Sprintf("s-%d", i%7), eventstore.AnyVersion, ev(typ, map[string]int{"i": i})))
		if err != nil {
			t.Fatal(err)
		}
		if typ != "Other" {
			ids = append(ids, got[0].EventID.String())
		}
	}
	p := eventstore.SubscriberParams{ConsumerGroup: "test-indexed", PollInterval: 5 * time.Millisecond, BatchSize: 7,
		EventTypes: want, IndexedTypes: true}

	q, err := (eventstore.SchemaAdapter{BatchSize: 7, EventTypes: want, IndexedTypes: true}).SelectQuery(wsql.SelectQueryParams{
		Topic: eventstore.Topic, ConsumerGroup: p.ConsumerGroup, OffsetsAdapter: eventstore.OffsetsAdapter()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE events`); err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	rows, err := pool.Query(ctx, "EXPLAIN "+q.Query, q.Args...)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(line + "\n")
	}
	if !strings.Contains(plan.String(), "events_scheduler_live_idx") {
		t.Fatalf("the read does not use the partial index:\n%s", plan.String())
	}

	msgs := subscribe(t, pool, p)
	var seen []string
	timeout := time.After(20 * time.Second)
	for len(seen) < len(ids) {
		select {
		case m := <-msgs:
			e, err := eventstore.EventFromMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, e.EventID.String())
			m.Ack()
		case <-timeout:
			t.Fatalf("read %d of %d %s events", len(seen), len(ids), want[0])
		}
	}
	if strings.Join(seen, ",") != strings.Join(ids, ",") {
		t.Fatalf("read %v, want %v in commit order", seen, ids)
	}
	select {
	case m := <-msgs:
		t.Fatalf("an event of another type was read: %s", m.Metadata)
	case <-time.After(100 * time.Millisecond):
	}
}

// The partial index's predicate lists exactly the scheduler's live types.
func TestSchedulerIndexCoversItsLiveTypes(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	var def string
	if err := pool.QueryRow(context.Background(), `SELECT indexdef FROM pg_indexes WHERE indexname = 'events_scheduler_live_idx'`).Scan(&def); err != nil {
		t.Fatal(err)
	}
	for _, typ := range projections.SchedulerLiveEvents {
		if !strings.Contains(def, "'"+typ+"'") {
			t.Errorf("events_scheduler_live_idx (%s) does not hold %s", def, typ)
		}
	}
	if n := strings.Count(def, "'::text"); n != len(projections.SchedulerLiveEvents) {
		t.Errorf("events_scheduler_live_idx (%s) holds %d types, the scheduler reads %d", def, n, len(projections.SchedulerLiveEvents))
	}
}

// TestSubscriptionEndsWhenItsContextEnds: a Watermill router closing may
// cancel a handler's context before (or instead of) calling Close on its
// subscriber; the subscription must still drain and close its channel, or
// the router waits out its whole close timeout.
func TestSubscriptionEndsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	sub, err := eventstore.NewSubscriber(pool, eventstore.SubscriberParams{ConsumerGroup: "test-ctx", PollInterval: 5 * time.Millisecond}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := eventstore.New(nil).Append(context.Background(), pool, appendTo("s", eventstore.AnyVersion, ev("E", map[string]int{"i": 1}))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, eventstore.Topic)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		m.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("no event delivered")
	}
	cancel()
	closed := make(chan struct{})
	go func() {
		for m := range msgs {
			m.Nack()
		}
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription's channel is still open 10 s after its context ended")
	}
}

// WithoutBodies leaves an EventReceived's body, headers and query out of
// its payload and keeps every other field, and every other event, whole.
func TestReadRangeWithoutBodies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	received := map[string]any{"event_id": "evt_1", "source_id": "src_1", "body_b64": "eyJhIjoxfQ==", "body_size": 7, "deliveries": 1,
		"headers": map[string][]string{"X-A": {"1"}}, "headers_b64": map[string][]string{"X-B": {"Ag=="}}, "query": map[string][]string{"q": {"1"}},
		"raw_query": "q=1", "raw_query_b64": "cT0x"}
	other := map[string]any{"body_b64": "kept", "headers": "kept", "status": "success"}
	if _, err := s.AppendMany(ctx, pool, appendTo("evt_1", eventstore.NoStream, ev("EventReceived", received)),
		appendTo("dlv_1", eventstore.NoStream, ev("DeliveryAttempted", other))); err != nil {
		t.Fatal(err)
	}
	read := func(q eventstore.RangeQuery) map[string]map[string]any {
		t.Helper()
		q.UntilTx, q.Limit = -1, 10
		var evs []eventstore.Event
		// Readable once every transaction older than the append's has ended
		// (the commit-safe horizon spans the cluster's other tests).
		waitFor(t, 10*time.Second, "both events readable", func() bool {
			var err error
			if evs, err = eventstore.ReadRange(ctx, pool, q); err != nil {
				t.Fatal(err)
			}
			return len(evs) == 2
		})
		out := map[string]map[string]any{}
		for _, e := range evs {
			var p map[string]any
			if err := json.Unmarshal(e.Payload, &p); err != nil {
				t.Fatal(err)
			}
			out[e.Type] = p
			if !q.WithoutMetadata && e.Metadata.Actor != "test" {
				t.Errorf("%s metadata = %+v", e.Type, e.Metadata)
			}
		}
		return out
	}
	for _, meta := range []bool{false, true} {
		got := read(eventstore.RangeQuery{WithoutBodies: true, WithoutMetadata: meta})
		want := map[string]any{"event_id": "evt_1", "source_id": "src_1", "body_size": float64(7), "deliveries": float64(1)}
		if fmt.Sprint(got["EventReceived"]) != fmt.Sprint(want) {
			t.Errorf("EventReceived without bodies (without metadata %v) = %v; want %v", meta, got["EventReceived"], want)
		}
		if fmt.Sprint(got["DeliveryAttempted"]) != fmt.Sprint(other) {
			t.Errorf("another event without bodies = %v; want it whole, %v", got["DeliveryAttempted"], other)
		}
	}
	if whole := read(eventstore.RangeQuery{}); len(whole["EventReceived"]) != len(received) {
		t.Errorf("EventReceived read whole = %v", whole["EventReceived"])
	}
}

// An append at an exact version looks its stream's last version up in the
// (stream_id, stream_version) index whatever the table held when the
// statement's generic plan was made. The engine runs its statements on
// generic plans; an EXISTS planned on a young table became a hashed
// subplan, a scan of all of events on every record.
func TestAppendAtAVersionLooksTheStreamUpInItsIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	s := eventstore.New(nil)
	if _, err := s.Append(ctx, pool, appendTo("s1", eventstore.NoStream, ev("A", nil))); err != nil {
		t.Fatal(err)
	}
	appends := []eventstore.StreamAppend{appendTo("s1", 1, ev("B", nil)), appendTo("s2", eventstore.NoStream, ev("C", nil))}
	if q, _, err := s.PrepareAppend(appends...); err != nil || q != eventstore.AppendKnownSQL {
		t.Fatalf("an append at exact versions runs %q (%v)", q, err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	scans := func() (seq, idx int64) {
		t.Helper()
		if err := tx.QueryRow(ctx, `SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = 'events'`).Scan(&seq, &idx); err != nil {
			t.Fatal(err)
		}
		return seq, idx
	}
	if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan"); err != nil {
		t.Fatal(err)
	}
	seq0, idx0 := scans()
	got, err := s.AppendMany(ctx, tx, appends...)
	if err != nil || len(got) != 2 || got[0].StreamVersion != 2 {
		t.Fatalf("append: %+v, %v", got, err)
	}
	if seq, idx := scans(); seq != seq0 || idx == idx0 {
		t.Fatalf("the append scanned events %d times and its indexes %d times: the version look-up must be an index probe", seq-seq0, idx-idx0)
	}
}
