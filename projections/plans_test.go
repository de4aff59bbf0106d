package projections_test

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/projections"
)

// The read models' statements find their rows by key. On tables autovacuum
// has not analyzed yet (a new installation, every benchmark run) PostgreSQL
// 15 plans sequential scans for them instead, whole-table for a handful of
// rows; the projector's transaction settings make it take the indexes. The
// test plans a batch's statements against young tables of a few thousand
// rows both ways: with the settings no read-model table is read by a
// sequential scan, without them (the control, so this test can fail) at
// least one is. TestProjectorTransactionHasItsSettings checks that the
// projector's transaction has them.
func TestProjectorStatementsFindRowsByKeyOnYoungTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	org, env := "org_plans", "env_plans"
	// Young for the whole test: autovacuum analyzing a table between the
	// seeding and the plans would give the control its statistics.
	if _, err := pool.Exec(ctx, `ALTER TABLE delivery_attempts SET (autovacuum_enabled = false);
		ALTER TABLE projected_deliveries SET (autovacuum_enabled = false);
		ALTER TABLE events_view SET (autovacuum_enabled = false);
		ALTER TABLE event_delivery_outcomes SET (autovacuum_enabled = false)`); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()

	webhook := func(i int, outcome string) []eventstore.Event {
		ev, dl := fmt.Sprintf("%032x", 1<<40+i), fmt.Sprintf("%032x", 2<<40+i)
		at := fmt.Sprintf("%032x", 3<<40+i)
		base := eventstore.Event{OrgID: org, EnvID: env, EventID: uuid.New()}
		rec, req := base, base
		rec.Type, rec.StreamID, rec.StreamVersion = domain.EvEventReceived, ev, 1
		rec.Decoded = domain.EventReceived{EventID: ev, SourceID: "src", SourceName: "s", SourceSlug: "s", Method: "POST", Deliveries: 1, ReceivedAt: now}
		req.Type, req.StreamID, req.StreamVersion = domain.EvDeliveryRequested, dl, 1
		req.Decoded = domain.DeliveryRequested{DeliveryID: dl, EventID: ev, ConnectionID: "conn", ConnectionName: "c", DestinationID: "dest",
			DestinationName: "d", RequestURL: "http://x", RequestMethod: "POST", AttemptID: at, TriggerType: domain.TriggerInitial, RequestedAt: now}
		out := []eventstore.Event{rec, req}
		if outcome != "" {
			out = append(out, attempted(base, dl, ev, at, 2, outcome, now))
		}
		return out
	}
	// A few thousand webhooks projected, no analyze: young tables.
	var old []eventstore.Event
	for i := 0; i < 3000; i++ {
		old = append(old, webhook(i, domain.AttemptSuccess)...)
	}
	// The last 20 are still in flight: their outcomes come in the batch planned below.
	var pending []eventstore.Event
	for i := 3000; i < 3020; i++ {
		pending = append(pending, webhook(i, "")...)
	}
	applyBatch(t, ctx, pool, append(old, pending...))
	// The batch planned: new webhooks, attempts and retries of earlier ones.
	var batch []eventstore.Event
	for i := 3020; i < 3040; i++ {
		batch = append(batch, webhook(i, domain.AttemptSuccess)...)
	}
	for i := 3000; i < 3020; i++ {
		ev, dl, at := fmt.Sprintf("%032x", 1<<40+i), fmt.Sprintf("%032x", 2<<40+i), fmt.Sprintf("%032x", 3<<40+i)
		base := eventstore.Event{OrgID: org, EnvID: env, EventID: uuid.New()}
		failed := attempted(base, dl, ev, at, 2, domain.AttemptFailed, now)
		retry := base
		retry.Type, retry.StreamID, retry.StreamVersion = domain.EvRetryScheduled, dl, 3
		next := fmt.Sprintf("%032x", 4<<40+i)
		retry.Decoded = domain.RetryScheduled{AfterAttemptID: at, NextAttemptID: next, AttemptNumber: 2, NotBefore: now.Add(time.Minute)}
		batch = append(batch, failed, retry, attempted(base, dl, ev, next, 4, domain.AttemptSuccess, now))
	}
	stmts := batchStatements(t, batch)

	scanned := func(settings string) []string {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if settings != "" {
			if _, err := tx.Exec(ctx, "SELECT "+settings); err != nil {
				t.Fatal(err)
			}
		}
		found := map[string]bool{}
		seq := regexp.MustCompile(`Seq Scan on (delivery_attempts|projected_deliveries|events_view|event_delivery_outcomes)\b`)
		for _, s := range stmts {
			rows, _ := tx.Query(ctx, "EXPLAIN "+s.SQL, s.Args...) // its error is the rows'
			lines, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
				var l string
				return l, r.Scan(&l)
			})
			if err != nil {
				t.Fatalf("explain %.60q: %v", s.SQL, err)
			}
			for _, l := range lines {
				if m := seq.FindStringSubmatch(l); m != nil {
					found[m[1]] = true
				}
			}
		}
		var out []string
		for r := range found {
			out = append(out, r)
		}
		sort.Strings(out)
		return out
	}
	if got := scanned(""); len(got) == 0 {
		t.Fatal("control: without the projector's settings no read-model table was scanned whole; the young tables no longer reproduce the plans the settings exist for")
	} else {
		t.Logf("without the settings the batch scans %v whole", got)
	}
	if got := scanned(projections.ProjectorSettings); len(got) > 0 {
		t.Fatalf("with the projector's settings the batch still scans %v whole", got)
	}
}

func attempted(base eventstore.Event, delivery, event, attempt string, version int64, status string, at time.Time) eventstore.Event {
	e := base
	e.EventID = uuid.New()
	e.Type, e.StreamID, e.StreamVersion = domain.EvDeliveryAttempted, delivery, version
	code := 200
	if status != domain.AttemptSuccess {
		code = 500
	}
	e.Decoded = domain.DeliveryAttempted{AttemptID: attempt, EventID: event, AttemptNumber: int(version+1) / 2, TriggerType: domain.TriggerInitial,
		RequestURL: "http://x", RequestMethod: "POST", RequestHeaders: "{}", ResponseStatus: &code, Status: status, StartedAt: at}
	return e
}

// batchStatements are the statements the projector runs for evs: the
// read models the batch forms write.
func batchStatements(t *testing.T, evs []eventstore.Event) []eventstore.Statement {
	t.Helper()
	a, err := projections.DeliveryAttemptsBatch(evs)
	if err != nil {
		t.Fatal(err)
	}
	e, err := projections.EventsBatch(evs)
	if err != nil {
		t.Fatal(err)
	}
	return append(a, e...)
}

func applyBatch(t *testing.T, ctx context.Context, pool *pgxpool.Pool, evs []eventstore.Event) {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	for _, s := range batchStatements(t, evs) {
		if _, err := tx.Exec(ctx, s.SQL, s.Args...); err != nil {
			t.Fatalf("%.60q: %v", s.SQL, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}
