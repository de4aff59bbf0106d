package handlers

import (
	"context"
	"time"

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
	result  chan error
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
func (g *groupCommitter) Append(ctx context.Context, appends []eventstore.StreamAppend) error {
	req := appendRequest{appends: appends, result: make(chan error, 1)}
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
	if len(batch) == 1 {
		_, err := g.store.AppendMany(ctx, g.pool, batch[0].appends...)
		batch[0].result <- err
		return
	}
	var all []eventstore.StreamAppend
	for _, r := range batch {
		all = append(all, r.appends...)
	}
	if _, err := g.store.AppendMany(ctx, g.pool, all...); err == nil {
		for _, r := range batch {
			r.result <- nil
		}
		return
	}
	// One request's failure must not fail its neighbours: retry each alone.
	for _, r := range batch {
		_, err := g.store.AppendMany(ctx, g.pool, r.appends...)
		r.result <- err
	}
}

func (g *groupCommitter) Close() { close(g.done) }
