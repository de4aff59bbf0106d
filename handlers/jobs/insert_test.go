package jobs_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// InsertTakeSQL leases a new job to the ingest's worker only when a claim
// could take it now: marked, due, its destination active, and no older due
// job of that destination waiting (a backlog held by a pause goes first).
func TestInsertTakeLeasesOnlyWhatAClaimWouldTake(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	for _, q := range []string{
		`INSERT INTO destinations (id, org_id, env_id, name, slug, url, status, created_at, updated_at) VALUES
			('d1', 'o', 'e', 'one', 'one', 'http://127.0.0.1:1/', 'active', now(), now()),
			('d2', 'o', 'e', 'two', 'two', 'http://127.0.0.1:1/', 'paused', now(), now())`,
		`INSERT INTO sources (id, org_id, env_id, name, slug, status, created_at, updated_at) VALUES ('s', 'o', 'e', 's', 's', 'active', now(), now())`,
		`INSERT INTO connections (id, org_id, env_id, source_id, destination_id, name, created_at, updated_at)
			VALUES ('c1', 'o', 'e', 's', 'd1', 'one', now(), now()), ('c2', 'o', 'e', 's', 'd2', 'two', now(), now())`,
		// d1's backlog: an older job, due and unleased (its destination was paused until now).
		`INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version)
			VALUES ('old', 'o', 'e', 'ev', 'c1', 'd1', gen_random_uuid(), 'scheduled', 'a-old', 1, 'initial', now() - interval '1 minute', 1)`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(id, conn, dest string, take bool) (leasedBy string) {
		t.Helper()
		now := time.Now().UTC()
		job := jobs.NewJob{DeliveryID: id, OrgID: "o", EnvID: "e", EventID: "ev-" + id, ConnectionID: conn, DestinationID: dest,
			ReceivedUUID: uuid.NewString(), AttemptID: "a-" + id, Trigger: "initial", Due: now.Add(-time.Millisecond)}
		rows, err := pool.Query(ctx, jobs.InsertTakeSQL, jobs.InsertTakeArgs([]jobs.NewJob{job}, []bool{take}, now, "worker", time.Minute)...)
		if err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var leased *string
		if err := pool.QueryRow(ctx, `SELECT leased_by FROM delivery_jobs WHERE delivery_id = $1`, id).Scan(&leased); err != nil {
			t.Fatal(err)
		}
		if leased == nil {
			return ""
		}
		return *leased
	}
	if got := insert("behind-backlog", "c1", "d1", true); got != "" {
		t.Errorf("a job behind its destination's due backlog was leased to %q", got)
	}
	if _, err := pool.Exec(ctx, `UPDATE delivery_jobs SET lease_until = now() + interval '1 minute', leased_by = 'other'
		WHERE destination_id = 'd1'`); err != nil {
		t.Fatal(err)
	}
	if got := insert("taken", "c1", "d1", true); got != "worker" {
		t.Errorf("a due job of an active destination with nothing waiting: leased to %q, want worker", got)
	}
	if got := insert("unmarked", "c1", "d1", false); got != "" {
		t.Errorf("a job not marked for the hand-off was leased to %q", got)
	}
	if got := insert("paused", "c2", "d2", true); got != "" {
		t.Errorf("a paused destination's job was leased to %q", got)
	}
}

// The hand-off insert's checks probe the new job's own destination,
// connection, source and circuit, and its destination's oldest due jobs:
// they do not read what other destinations and tenants hold. A backlog of
// 3,000 due jobs held by another tenant's paused destination, and 3,000
// routes with some paused and some open circuits, are all there; on
// analyzed tables (as upkeep leaves them), with the generic plan the
// ingest's transaction uses, inserting one job reads at most a few rows of
// each table (pg_stat_xact_user_tables: rows a scan returned from the heap
// or an index, this transaction). With the checks as hashed subplans,
// PostgreSQL's choice, it read all 3,000 held jobs and all 1,500 circuit
// rows.
func TestInsertTakeReadsOnlyItsOwnJobsRoutes(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	manyRoutes(ctx, t, pool,
		// d10 is paused: its 3,000 jobs are due and held.
		`INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version)
			SELECT 'held' || g, 'o3', 'e', 'ev' || g, 'c10', 'd10', gen_random_uuid(), 'scheduled', 'a' || g, 1, 'initial',
				now() - interval '1 hour' + g * interval '1 ms', 1
			FROM generate_series(1, 3000) g`)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	before := rowsRead(ctx, t, tx)
	now := time.Now().UTC()
	job := jobs.NewJob{DeliveryID: "new", OrgID: "o1", EnvID: "e", EventID: "ev-new", ConnectionID: "c1", DestinationID: "d1",
		ReceivedUUID: uuid.NewString(), AttemptID: "a-new", Trigger: "initial", Due: now.Add(-time.Millisecond),
		Sent: &jobs.Sent{BodyB64: "e30=", ContentType: "application/json"}}
	if taken := handOff(ctx, t, tx, job, now); taken != 1 {
		t.Fatalf("the job of an active route with nothing waiting was not handed over (%d rows)", taken)
	}
	// destinations is left out: the final join reading it whole or by key
	// is the planner's choice by its size (a hash of 300 rows costs less
	// than a probe each for ten), as in a claim.
	for table, n := range readSince(ctx, t, tx, before) {
		if table != "destinations" && n > 5 {
			t.Errorf("inserting one job read %d rows of %s", n, table)
		}
	}
}

// manyRoutes fills the configuration of 3,000 routes (destination d<g>,
// source s<g>, connection c<g>, g from 1 to 3,000) of seven tenants:
// every tenth destination, eleventh source and thirteenth connection
// paused, a circuit for every even destination, open for every sixth; then
// runs more and analyzes the tables, as upkeep leaves them.
func manyRoutes(ctx context.Context, tb testing.TB, pool *pgxpool.Pool, more ...string) {
	tb.Helper()
	setup := []string{
		`INSERT INTO destinations (id, org_id, env_id, name, slug, url, status, created_at, updated_at)
			SELECT 'd' || g, 'o' || g % 7, 'e', 'n' || g, 's' || g, 'http://127.0.0.1:1/', CASE WHEN g % 10 = 0 THEN 'paused' ELSE 'active' END, now(), now()
			FROM generate_series(1, 3000) g`,
		`INSERT INTO sources (id, org_id, env_id, name, slug, status, created_at, updated_at)
			SELECT 's' || g, 'o' || g % 7, 'e', 'n' || g, 's' || g, CASE WHEN g % 11 = 0 THEN 'paused' ELSE 'active' END, now(), now()
			FROM generate_series(1, 3000) g`,
		`INSERT INTO connections (id, org_id, env_id, source_id, destination_id, name, status, created_at, updated_at)
			SELECT 'c' || g, 'o' || g % 7, 'e', 's' || g, 'd' || g, 'n' || g, CASE WHEN g % 13 = 0 THEN 'paused' ELSE 'active' END, now(), now()
			FROM generate_series(1, 3000) g`,
		`INSERT INTO destination_circuits (destination_id, org_id, env_id, state)
			SELECT 'd' || g, 'o' || g % 7, 'e', CASE WHEN g % 3 = 0 THEN 'open' ELSE 'closed' END FROM generate_series(2, 3000, 2) g`,
	}
	for _, q := range append(append(setup, more...), `ANALYZE destinations, sources, connections, destination_circuits, delivery_jobs`) {
		if _, err := pool.Exec(ctx, q); err != nil {
			tb.Fatal(err)
		}
	}
}

// rowsRead is how many rows tx's scans have returned from the heap or an
// index so far (pg_stat_xact_user_tables), by configuration and job table.
// The counts are this backend's not yet reported to the statistics, which
// can include a set-up's (the connections' foreign-key checks read
// sources): a statement's are the difference (readSince).
func rowsRead(ctx context.Context, tb testing.TB, tx pgx.Tx) map[string]int64 {
	tb.Helper()
	rows, err := tx.Query(ctx, `SELECT relname::text, seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables
		WHERE relname IN ('delivery_jobs', 'destinations', 'sources', 'connections', 'destination_circuits')`)
	if err != nil {
		tb.Fatal(err)
	}
	got := map[string]int64{}
	for rows.Next() {
		var table string
		var n int64
		if err := rows.Scan(&table, &n); err != nil {
			tb.Fatal(err)
		}
		got[table] = n
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(got) != 5 {
		tb.Fatalf("read counts %v, want five tables", got)
	}
	return got
}

// readSince is what tx read since before (rowsRead), by table.
func readSince(ctx context.Context, tb testing.TB, tx pgx.Tx, before map[string]int64) map[string]int64 {
	tb.Helper()
	after := rowsRead(ctx, tb, tx)
	for table := range after {
		after[table] -= before[table]
	}
	return after
}

// The ingest holds the webhooks it hands over (NewJob.Sent): the hand-off
// insert then returns the leased jobs without reading their EventReceived
// back, which the log-reading form does (it returns no row for a job whose
// webhook the log does not hold).
func TestInsertTakeForSentWebhooksDoesNotReadTheLog(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	for _, q := range []string{
		`INSERT INTO destinations (id, org_id, env_id, name, slug, url, status, created_at, updated_at) VALUES
			('d1', 'o', 'e', 'one', 'one', 'http://127.0.0.1:1/', 'active', now(), now())`,
		`INSERT INTO sources (id, org_id, env_id, name, slug, status, created_at, updated_at) VALUES ('s', 'o', 'e', 's', 's', 'active', now(), now())`,
		`INSERT INTO connections (id, org_id, env_id, source_id, destination_id, name, created_at, updated_at)
			VALUES ('c1', 'o', 'e', 's', 'd1', 'one', now(), now())`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	returned := func(id string, sent *jobs.Sent) (sql string, n int) {
		t.Helper()
		now := time.Now().UTC()
		job := []jobs.NewJob{{DeliveryID: id, OrgID: "o", EnvID: "e", EventID: "ev-" + id, ConnectionID: "c1", DestinationID: "d1",
			ReceivedUUID: uuid.NewString(), AttemptID: "a-" + id, Trigger: "initial", Due: now.Add(-time.Millisecond), Sent: sent}}
		take := []bool{true}
		sql = jobs.InsertTakeSQLFor(job, take)
		rows, err := pool.Query(ctx, sql, jobs.InsertTakeArgs(job, take, now, "worker", time.Minute)...)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `UPDATE delivery_jobs SET state = 'done', lease_until = NULL, leased_by = NULL`); err != nil {
			t.Fatal(err) // the next job has no older one of its destination waiting
		}
		return sql, n
	}
	logSQL, n := returned("from-log", nil)
	if n != 0 {
		t.Errorf("the log-reading insert returned %d rows for a webhook the log does not hold", n)
	}
	sentSQL, n := returned("sent", &jobs.Sent{BodyB64: "e30=", ContentType: "application/json"})
	if n != 1 {
		t.Errorf("the insert for a webhook the ingest holds returned %d rows, want 1", n)
	}
	if sentSQL == logSQL || strings.Contains(sentSQL, "FROM events") || strings.Contains(sentSQL, "body_b64") {
		t.Errorf("the insert for held webhooks still reads the log:\n%s", sentSQL)
	}
}

// handOff runs the ingest's hand-off insert of job, marked to be taken, in
// tx with the generic plan the ingest's transaction uses, and returns how
// many jobs it handed over.
func handOff(ctx context.Context, tb testing.TB, tx pgx.Tx, job jobs.NewJob, now time.Time) int {
	tb.Helper()
	if _, err := tx.Exec(ctx, `SELECT set_config('plan_cache_mode', 'force_generic_plan', true)`); err != nil {
		tb.Fatal(err)
	}
	newJobs, take := []jobs.NewJob{job}, []bool{true}
	rows, err := tx.Query(ctx, jobs.InsertTakeSQLFor(newJobs, take), jobs.InsertTakeArgs(newJobs, take, now, "worker", time.Minute)...)
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if rows.Close(); rows.Err() != nil {
		tb.Fatal(rows.Err())
	}
	return n
}
