package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/eventstore"
)

// groupCommitter appends the events of concurrent requests in one statement
// and one commit (group commit): ingest's cost is dominated by per-transaction
// work (a WAL flush, a backend busy per request), and 32 concurrent ingests
// starved the single-connection consumer groups of CPU.
type groupCommitter struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
	reqs  chan appendRequest
	max   int
	done  chan struct{}
}

type appendRequest struct {
	appends []eventstore.StreamAppend
	jobs    []newJob
	// dedup, when set, is claimed in the same transaction; a request whose
	// key is already held within its window stores dupAppends instead (the
	// event marked duplicate, no deliveries) and reports *duplicate.
	dedup      *dedupClaim
	dupAppends []eventstore.StreamAppend
	duplicate  *bool
	result     chan error
}

// dedupClaim is a source's dedup key, held until expires.
type dedupClaim struct {
	SourceID, Key, EventID string
	Now, Expires           time.Time
}

// newJob is the delivery_jobs row of a new delivery, written in the same
// transaction as its DeliveryRequested (the scheduler derives the same row
// from the log, idempotently, and is what rebuilds it).
type newJob struct {
	DeliveryID, OrgID, EnvID, EventID, ConnectionID, DestinationID, ReceivedUUID, AttemptID, Trigger string
	Due                                                                                              time.Time
}

func newGroupCommitter(pool *pgxpool.Pool, store *eventstore.Store, workers, maxBatch int) *groupCommitter {
	g := &groupCommitter{pool: pool, store: store, reqs: make(chan appendRequest), max: maxBatch, done: make(chan struct{})}
	for i := 0; i < workers; i++ {
		go g.run()
	}
	return g
}

// Append stores the appends, together with whatever other requests are
// waiting, and returns once they are committed. It returns the store's
// error for these appends (ErrConcurrency, ErrDuplicateEvent, …).
func (g *groupCommitter) Append(ctx context.Context, appends []eventstore.StreamAppend, jobs []newJob) error {
	return g.append(ctx, appendRequest{appends: appends, jobs: jobs, result: make(chan error, 1)})
}

// AppendDedup is Append with a dedup claim: it reports whether the webhook
// was a duplicate (and dupAppends were stored instead).
func (g *groupCommitter) AppendDedup(ctx context.Context, appends []eventstore.StreamAppend, jobs []newJob, claim dedupClaim, dupAppends []eventstore.StreamAppend) (bool, error) {
	var dup bool
	err := g.append(ctx, appendRequest{appends: appends, jobs: jobs, dedup: &claim, dupAppends: dupAppends, duplicate: &dup, result: make(chan error, 1)})
	return dup, err
}

func (g *groupCommitter) append(ctx context.Context, req appendRequest) error {
	select {
	case g.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.done:
		return errClosed
	}
	// Once handed over the append is committed or not regardless of ctx: wait for the answer.
	return <-req.result
}

func (g *groupCommitter) run() {
	for {
		var first appendRequest
		select {
		case first = <-g.reqs:
		case <-g.done:
			return
		}
		batch := []appendRequest{first}
	collect:
		for len(batch) < g.max {
			select {
			case r := <-g.reqs:
				batch = append(batch, r)
			default:
				break collect
			}
		}
		g.commit(batch)
	}
}

func (g *groupCommitter) commit(batch []appendRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := g.commitTx(ctx, batch)
	if err == nil || len(batch) == 1 {
		for _, r := range batch {
			r.result <- err
		}
		return
	}
	// One request's failure must not fail its neighbours: retry each alone.
	for _, r := range batch {
		r.result <- g.commitTx(ctx, []appendRequest{r})
	}
}

// commitTx appends every request's events and inserts their jobs in one
// transaction, the event INSERT first.
func (g *groupCommitter) commitTx(ctx context.Context, batch []appendRequest) error {
	for _, r := range batch {
		if r.dedup != nil {
			return g.commitDedupTx(ctx, batch)
		}
	}
	return g.commitPipelined(ctx, batch)
}

// commitPipelined is commitTx without dedup claims: BEGIN, the append, the
// jobs' insert and COMMIT go to PostgreSQL in one round trip instead of one
// each (ingest waits on this, so round trips are its latency). Any error,
// a lost race included (the append then fails), aborts the transaction, and
// its COMMIT rolls back.
func (g *groupCommitter) commitPipelined(ctx context.Context, batch []appendRequest) error {
	var all []eventstore.StreamAppend
	var jobs []newJob
	for _, r := range batch {
		all = append(all, r.appends...)
		jobs = append(jobs, r.jobs...)
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	read, err := g.store.QueueAppend(b, all...)
	if err != nil {
		return err
	}
	if len(jobs) > 0 {
		b.Queue(insertJobsSQL, jobsArgs(jobs)...)
	}
	return sendTx(ctx, g.pool, b, func(br pgx.BatchResults) error {
		if _, err := read(br); err != nil {
			return err
		}
		if len(jobs) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert jobs: %w", err)
			}
		}
		return nil
	})
}

// sendTx sends b (which starts with BEGIN) and COMMIT in one round trip;
// read consumes the results of b's statements after BEGIN. It returns the
// first error; a transaction that failed is rolled back, never committed.
func sendTx(ctx context.Context, pool *pgxpool.Pool, b *pgx.Batch, read func(pgx.BatchResults) error) error {
	b.Queue("COMMIT")
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release() // a connection left inside a transaction is closed, not reused
	br := conn.SendBatch(ctx, b)
	_, err = br.Exec() // BEGIN
	if err == nil {
		err = read(br)
	}
	if err == nil {
		var tag pgconn.CommandTag
		if tag, err = br.Exec(); err == nil && tag.String() != "COMMIT" {
			err = fmt.Errorf("commit: the transaction was rolled back (%s)", tag)
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if conn.Conn().PgConn().TxStatus() != 'I' {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	}
	return err
}

// commitDedupTx is commitTx for a batch with dedup claims, which decide
// which events are appended.
func (g *groupCommitter) commitDedupTx(ctx context.Context, batch []appendRequest) error {
	return pgx.BeginFunc(ctx, g.pool, func(tx pgx.Tx) error {
		dups, err := claimDedup(ctx, tx, batch)
		if err != nil {
			return err
		}
		var all []eventstore.StreamAppend
		var jobs []newJob
		for i, r := range batch {
			if r.duplicate != nil {
				*r.duplicate = dups[i]
			}
			if dups[i] {
				all = append(all, r.dupAppends...)
				continue
			}
			all = append(all, r.appends...)
			jobs = append(jobs, r.jobs...)
		}
		if _, err := g.store.AppendMany(ctx, tx, all...); err != nil {
			return err
		}
		if len(jobs) == 0 {
			return nil
		}
		return insertJobs(ctx, tx, jobs)
	})
}

func (g *groupCommitter) Close() { close(g.done) }

// insertJobs writes new deliveries' job rows (and wakes the dispatcher on
// commit); a row the scheduler already derived is left as it is.
func insertJobs(ctx context.Context, tx pgx.Tx, jobs []newJob) error {
	if len(jobs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, insertJobsSQL, jobsArgs(jobs)...); err != nil {
		return fmt.Errorf("insert jobs: %w", err)
	}
	return nil
}

const insertJobsSQL = `WITH ins AS (
		INSERT INTO delivery_jobs (delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid,
			state, attempt_id, attempt_number, trigger_type, due_at, version)
		SELECT d, o, e, ev, c, dst, r::uuid, 'scheduled', a, 1, tr, due, 1
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])
			AS u(d, o, e, ev, c, dst, r, a, tr, due)
		ON CONFLICT (delivery_id) DO NOTHING RETURNING 1)
	SELECT pg_notify('hookstream_jobs', '') FROM ins LIMIT 1`

// jobsArgs are insertJobsSQL's arguments: one array per column.
func jobsArgs(jobs []newJob) []any {
	cols := make([][]string, 9)
	due := make([]time.Time, len(jobs))
	for i, j := range jobs {
		for c, v := range []string{j.DeliveryID, j.OrgID, j.EnvID, j.EventID, j.ConnectionID, j.DestinationID, j.ReceivedUUID, j.AttemptID, j.Trigger} {
			cols[c] = append(cols[c], v)
		}
		due[i] = j.Due
	}
	return []any{cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8], due}
}

// claimDedup claims the batch's dedup keys and reports which requests are
// duplicates: of a key's holders in the batch only the first can claim it,
// and it does when no unexpired claim holds it.
func claimDedup(ctx context.Context, tx pgx.Tx, batch []appendRequest) ([]bool, error) {
	dups := make([]bool, len(batch))
	first := map[[2]string]int{}
	var src, key, ev []string
	var exp []time.Time
	var now time.Time
	for i, r := range batch {
		if r.dedup == nil {
			continue
		}
		k := [2]string{r.dedup.SourceID, r.dedup.Key}
		if _, seen := first[k]; seen {
			dups[i] = true
			continue
		}
		first[k] = i
		src, key, ev, exp = append(src, k[0]), append(key, k[1]), append(ev, r.dedup.EventID), append(exp, r.dedup.Expires)
		now = r.dedup.Now
	}
	if len(src) == 0 {
		return dups, nil
	}
	rows, err := tx.Query(ctx, `INSERT INTO dedup_keys AS d (source_id, key, event_id, expires_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
		ON CONFLICT (source_id, key) DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at
		WHERE d.expires_at <= $5
		RETURNING source_id, key`, src, key, ev, exp, now)
	if err != nil {
		return nil, fmt.Errorf("claim dedup keys: %w", err)
	}
	won := map[[2]string]bool{}
	for rows.Next() {
		var k [2]string
		if err := rows.Scan(&k[0], &k[1]); err != nil {
			rows.Close()
			return nil, err
		}
		won[k] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim dedup keys: %w", err)
	}
	for k, i := range first {
		dups[i] = !won[k]
	}
	return dups, nil
}
