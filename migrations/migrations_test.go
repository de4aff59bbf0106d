package migrations_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/migrations"
)

func TestApplyTwiceIsNoOpAndEditedMigrationIsRefused(t *testing.T) {
	ctx := context.Background()
	// A database created empty (not from the migrated template).
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
		t.Fatal(err)
	}
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	applied, err := migrations.Apply(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(all) {
		t.Fatalf("first run applied %v, want all %d", applied, len(all))
	}
	again, err := migrations.Apply(ctx, pool)
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v (%v), want nothing", again, err)
	}
	// Simulate an edited file: the stored checksum no longer matches.
	if _, err := pool.Exec(ctx, "UPDATE schema_migrations SET checksum = 'edited' || checksum WHERE version = $1", all[0].Version); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Apply(ctx, pool); !errors.Is(err, migrations.ErrEdited) {
		t.Fatalf("err = %v, want ErrEdited", err)
	}
}

func TestConcurrentAppliesSerialise(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	total := make(chan int, 4)
	for i := 0; i < 4; i++ {
		go func() {
			applied, err := migrations.Apply(ctx, pool)
			errs <- err
			total <- len(applied)
		}()
	}
	sum := 0
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		sum += <-total
	}
	all, _ := migrations.All()
	if sum != len(all) {
		t.Fatalf("4 concurrent runs applied %d migrations in total, want %d (each once)", sum, len(all))
	}
}

// A migration marked no-transaction (CREATE INDEX CONCURRENTLY) leaves a
// valid index, and applies again after being cut short: here its record is
// removed and its index left invalid, as a build interrupted midway leaves it.
func TestNoTransactionMigrationAppliesAgainAfterAnInterruptedBuild(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	valid := func() bool {
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = 'events_scheduler_live_idx'::regclass`).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !valid() {
		t.Fatal("events_scheduler_live_idx is not valid after the migrations")
	}
	if _, err := pool.Exec(ctx, `UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'events_scheduler_live_idx'::regclass`); err != nil {
		t.Skipf("cannot mark the index invalid here: %v", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM schema_migrations WHERE version = 12`); err != nil {
		t.Fatal(err)
	}
	applied, err := migrations.Apply(ctx, pool)
	if err != nil || len(applied) != 1 {
		t.Fatalf("re-applying the interrupted migration: %v %v", applied, err)
	}
	if !valid() {
		t.Fatal("the index is still invalid after the migration ran again")
	}
}

// Migration 0026 leaves the list indexes ascending, one of each under its old
// name, and applies again cleanly from any point it was cut at (here: after
// the first index was swapped, and with a half-built copy of another left).
func TestListIndexesAscendingAppliesAgain(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	check := func(when string) {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT indexname, indexdef FROM pg_indexes
			WHERE tablename IN ('delivery_attempts', 'events_view') AND (indexname LIKE '%list%' OR indexname LIKE '%status%')`)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for rows.Next() {
			var name, def string
			if err := rows.Scan(&name, &def); err != nil {
				t.Fatal(err)
			}
			got[name] = def
		}
		want := map[string]string{
			"delivery_attempts_list_idx": "(org_id, env_id, created_at, id)",
			"events_view_list_idx":       "(org_id, env_id, received_at, id)",
			"events_view_status_idx":     "(org_id, env_id, status, received_at)",
		}
		if len(got) != len(want) {
			t.Errorf("%s: indexes %v, want %v", when, got, want)
		}
		for name, cols := range want {
			if def := got[name]; !strings.HasSuffix(def, cols) {
				t.Errorf("%s: %s is %q, want it on %s", when, name, def, cols)
			}
		}
	}
	check("after the migrations")
	for _, q := range []string{
		`DELETE FROM schema_migrations WHERE version = 26`,
		`CREATE INDEX events_view_list_asc_idx ON events_view (org_id, env_id)`, // a build cut short
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if applied, err := migrations.Apply(ctx, pool); err != nil || len(applied) != 1 {
		t.Fatalf("applying 0026 again: %v %v", applied, err)
	}
	check("applied again")
}

// projected_deliveries is read by its key only: 0027 leaves it no other
// index, and applies again (a re-run after a crash) without error.
func TestProjectedDeliveriesKeepsOnlyItsKey(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	indexes := func() []string {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT indexname::text FROM pg_indexes WHERE tablename = 'projected_deliveries' ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return names
	}
	if got := strings.Join(indexes(), ","); got != "projected_deliveries_pkey" {
		t.Fatalf("projected_deliveries has indexes %s, want only its primary key", got)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM schema_migrations WHERE version = 27`); err != nil {
		t.Fatal(err)
	}
	if applied, err := migrations.Apply(ctx, pool); err != nil || len(applied) != 1 {
		t.Fatalf("applying 0027 again: %v %v", applied, err)
	}
	if got := strings.Join(indexes(), ","); got != "projected_deliveries_pkey" {
		t.Fatalf("applied again: indexes %s", got)
	}
}

// event_delivery_outcomes has one index, its primary key on (event_id,
// delivery_id), after 0028; an upsert of an outcome finds its row through it;
// and 0028 applies again over its own result, over a run cut short after
// the new index was built, and over one cut short while building it.
func TestOutcomesHaveOneKey(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	check := func(when string) {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT i.indexrelid::regclass::text, i.indisprimary, pg_get_indexdef(i.indexrelid)
			FROM pg_index i WHERE i.indrelid = 'event_delivery_outcomes'::regclass`)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var name, def string
			var primary bool
			if err := rows.Scan(&name, &primary, &def); err != nil {
				t.Fatal(err)
			}
			if !primary || !strings.HasSuffix(def, "(event_id, delivery_id)") {
				t.Errorf("%s: index %s (primary %v): %s", when, name, primary, def)
			}
			got = append(got, name)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Errorf("%s: indexes %v, want the primary key only", when, got)
		}
	}
	check("after the migrations")
	upsert := `INSERT INTO event_delivery_outcomes (delivery_id, event_id, outcome, version) VALUES ('d1', 'e1', $1, $2)
		ON CONFLICT (event_id, delivery_id) DO UPDATE SET outcome = excluded.outcome, version = excluded.version
		WHERE event_delivery_outcomes.version < excluded.version`
	for _, o := range []struct {
		outcome string
		version int
	}{{"success", 3}, {"dlq", 5}, {"success", 4}} {
		if _, err := pool.Exec(ctx, upsert, o.outcome, o.version); err != nil {
			t.Fatal(err)
		}
	}
	var outcome string
	var n int
	if err := pool.QueryRow(ctx, `SELECT max(outcome), count(*) FROM event_delivery_outcomes`).Scan(&outcome, &n); err != nil || n != 1 || outcome != "dlq" {
		t.Fatalf("after three upserts: %d rows, outcome %q (%v); want one row, dlq (the newest version)", n, outcome, err)
	}
	reapply := func(when string, setup ...string) {
		t.Helper()
		for _, q := range append([]string{`DELETE FROM schema_migrations WHERE version = 28`}, setup...) {
			if _, err := pool.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		if applied, err := migrations.Apply(ctx, pool); err != nil || len(applied) != 1 {
			t.Fatalf("%s: applying 0028 again: %v %v", when, applied, err)
		}
		check(when)
	}
	reapply("applied again")
	// Cut short after the build: the old key and index are still there.
	reapply("applied again over a half-done run",
		`ALTER TABLE event_delivery_outcomes DROP CONSTRAINT event_delivery_outcomes_pkey`,
		`ALTER TABLE event_delivery_outcomes ADD CONSTRAINT event_delivery_outcomes_pkey PRIMARY KEY (delivery_id)`,
		`CREATE INDEX event_delivery_outcomes_event_idx ON event_delivery_outcomes (event_id)`,
		`CREATE UNIQUE INDEX event_delivery_outcomes_key ON event_delivery_outcomes (event_id, delivery_id)`)
	// Cut short during the build: an index of that name, not the one wanted.
	reapply("applied again over a build cut short",
		`ALTER TABLE event_delivery_outcomes DROP CONSTRAINT event_delivery_outcomes_pkey`,
		`ALTER TABLE event_delivery_outcomes ADD CONSTRAINT event_delivery_outcomes_pkey PRIMARY KEY (delivery_id)`,
		`CREATE INDEX event_delivery_outcomes_event_idx ON event_delivery_outcomes (event_id)`,
		`CREATE INDEX event_delivery_outcomes_key ON event_delivery_outcomes (event_id)`)
}
