package ingest

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/wake"
)

// jobsChannel wakes dispatchers (and projectors) after ingest committed.
const jobsChannel = jobs.Channel

// groupCommitter appends the events of concurrent requests in one statement
// and one commit (group commit): ingest's cost is dominated by per-transaction
// work (a WAL flush, a backend busy per request), and 32 concurrent ingests
// starved the single-connection consumer groups of CPU.
type groupCommitter struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
	reqs  chan appendRequest
	wake  *wake.Notifier
	max   int
	done  chan struct{}
	// handoff, when set, is the delivery engine of this process: new jobs
	// it has room for are leased in the ingest's transaction and sent by
	// it, with no claim (jobs.Handoff).
	handoff atomic.Pointer[jobs.Handoff]
}

type appendRequest struct {
	appends []eventstore.StreamAppend
	jobs    []jobs.NewJob
	// dedup, when set, is claimed in the same transaction; a request whose
	// key is already held within its window stores dupAppends instead (the
	// event marked duplicate, no deliveries) and reports *duplicate.
	dedup      *dedupClaim
	dupAppends []eventstore.StreamAppend
	duplicate  *bool
	// original receives, for a duplicate, the event id that holds its key.
	original *string
	result   chan error
}

// dedupClaim is a source's dedup key, held until expires.
type dedupClaim struct {
	SourceID, Key, EventID string
	Now, Expires           time.Time
}

func newGroupCommitter(pool *pgxpool.Pool, store *eventstore.Store, w *wake.Notifier, workers, maxBatch int) *groupCommitter {
	g := &groupCommitter{pool: pool, store: store, wake: w, reqs: make(chan appendRequest), max: maxBatch, done: make(chan struct{})}
	for i := 0; i < workers; i++ {
		go g.run()
	}
	return g
}

// Append stores the appends, together with whatever other requests are
// waiting, and returns once they are committed. It returns the store's
// error for these appends (ErrConcurrency, ErrDuplicateEvent, …).
func (g *groupCommitter) Append(ctx context.Context, appends []eventstore.StreamAppend, newJobs []jobs.NewJob) error {
	return g.append(ctx, appendRequest{appends: appends, jobs: newJobs, result: make(chan error, 1)})
}

// AppendDedup is Append with a dedup claim: it reports whether the webhook
// was a duplicate (and dupAppends were stored instead), and then the event
// that holds its key.
func (g *groupCommitter) AppendDedup(ctx context.Context, appends []eventstore.StreamAppend, newJobs []jobs.NewJob, claim dedupClaim, dupAppends []eventstore.StreamAppend) (dup bool, original string, err error) {
	err = g.append(ctx, appendRequest{appends: appends, jobs: newJobs, dedup: &claim, dupAppends: dupAppends, duplicate: &dup, original: &original,
		result: make(chan error, 1)})
	return dup, original, err
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
// transaction, the event INSERT first; after the commit it wakes the
// dispatchers when there are jobs.
func (g *groupCommitter) commitTx(ctx context.Context, batch []appendRequest) error {
	commit, jobs := g.commitPipelined, 0
	for _, r := range batch {
		if r.dedup != nil {
			commit = g.commitDedupTx
		}
		jobs += len(r.jobs)
	}
	handedAll, err := commit(ctx, batch)
	switch {
	case err != nil || jobs == 0:
	case handedAll:
		// This process sends them all: only other processes hear of it.
		g.wake.SignalOthers(jobsChannel)
	default:
		g.wake.Signal(jobsChannel)
	}
	return err
}

// commitPipelined is commitTx without dedup claims: BEGIN, the append, the
// jobs' insert and COMMIT go to PostgreSQL in one round trip instead of one
// each (ingest waits on this, so round trips are its latency). Any error,
// a lost race included (the append then fails), aborts the transaction, and
// its COMMIT rolls back. With a hand-off, the jobs the engine has room for
// are inserted leased to it and sent once the commit is done; it reports
// whether every job was.
func (g *groupCommitter) commitPipelined(ctx context.Context, batch []appendRequest) (bool, error) {
	var all []eventstore.StreamAppend
	var newJobs []jobs.NewJob
	for _, r := range batch {
		all = append(all, r.appends...)
		newJobs = append(newJobs, r.jobs...)
	}
	var take []bool
	var ticket jobs.Ticket
	if h := g.handoff.Load(); h != nil && len(newJobs) > 0 {
		take, ticket = (*h).Reserve(newJobs)
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	read, err := g.store.QueueAppend(b, all...)
	if err != nil {
		if ticket != nil {
			ticket.Aborted()
		}
		return false, err
	}
	switch {
	case ticket != nil:
		now, worker, ttl := ticket.Lease()
		b.Queue(jobs.InsertTakeSQLFor(newJobs, take), jobs.InsertTakeArgs(newJobs, take, now, worker, ttl)...)
	case len(newJobs) > 0:
		b.Queue(jobs.InsertSQL, jobs.InsertArgs(newJobs)...)
	}
	err = kit.SendTx(ctx, g.pool, true, b, func(br pgx.BatchResults) error {
		if _, err := read(br); err != nil {
			return err
		}
		switch {
		case ticket != nil:
			rows, err := br.Query()
			if err != nil {
				return fmt.Errorf("insert jobs: %w", err)
			}
			return ticket.Read(rows)
		case len(newJobs) > 0:
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert jobs: %w", err)
			}
		}
		return nil
	})
	if ticket == nil {
		return false, err
	}
	if err != nil {
		ticket.Aborted()
		return false, err
	}
	return ticket.Committed(), nil
}

// commitDedupTx is commitTx for a batch with dedup claims, which decide
// which events are appended.
func (g *groupCommitter) commitDedupTx(ctx context.Context, batch []appendRequest) (bool, error) {
	return false, pgx.BeginFunc(ctx, g.pool, func(tx pgx.Tx) error {
		dups, originals, err := claimDedup(ctx, tx, batch)
		if err != nil {
			return err
		}
		var all []eventstore.StreamAppend
		var newJobs []jobs.NewJob
		for i, r := range batch {
			if r.duplicate != nil {
				*r.duplicate = dups[i]
			}
			if r.original != nil {
				*r.original = originals[i]
			}
			if dups[i] {
				all = append(all, r.dupAppends...)
				continue
			}
			all = append(all, r.appends...)
			newJobs = append(newJobs, r.jobs...)
		}
		if _, err := g.store.AppendMany(ctx, tx, all...); err != nil {
			return err
		}
		if len(newJobs) == 0 {
			return nil
		}
		return jobs.Insert(ctx, tx, newJobs)
	})
}

func (g *groupCommitter) Close() { close(g.done) }

// claimDedup claims the batch's dedup keys and reports which requests are
// duplicates, and the event holding each one's key: of a key's holders in
// the batch only the first can claim it, and it does when no unexpired
// claim holds it.
func claimDedup(ctx context.Context, tx pgx.Tx, batch []appendRequest) ([]bool, []string, error) {
	dups := make([]bool, len(batch))
	originals := make([]string, len(batch))
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
		return dups, originals, nil
	}
	// A key already held is not updated, but ON CONFLICT locks its row: the
	// holder read after it is the one that stays.
	rows, err := tx.Query(ctx, `WITH claimed AS (
			INSERT INTO dedup_keys AS d (source_id, key, event_id, expires_at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
			ON CONFLICT (source_id, key) DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at
			WHERE d.expires_at <= $5
			RETURNING source_id, key)
		SELECT u.s, u.k, c.source_id IS NOT NULL, coalesce(d.event_id, '')
		FROM unnest($1::text[], $2::text[]) AS u(s, k)
		LEFT JOIN claimed c ON c.source_id = u.s AND c.key = u.k
		LEFT JOIN dedup_keys d ON c.source_id IS NULL AND d.source_id = u.s AND d.key = u.k`, src, key, ev, exp, now)
	if err != nil {
		return nil, nil, fmt.Errorf("claim dedup keys: %w", err)
	}
	won := map[[2]string]bool{}
	holder := map[[2]string]string{}
	for rows.Next() {
		var k [2]string
		var claimed bool
		var held string
		if err := rows.Scan(&k[0], &k[1], &claimed, &held); err != nil {
			rows.Close()
			return nil, nil, err
		}
		won[k], holder[k] = claimed, held
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("claim dedup keys: %w", err)
	}
	for k, i := range first {
		dups[i] = !won[k]
		if won[k] {
			holder[k] = batch[i].dedup.EventID // later holders in this batch are its duplicates
		} else {
			originals[i] = holder[k]
		}
	}
	for i, r := range batch {
		if r.dedup != nil && dups[i] && originals[i] == "" {
			originals[i] = holder[[2]string{r.dedup.SourceID, r.dedup.Key}]
		}
	}
	return dups, originals, nil
}
