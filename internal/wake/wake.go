// Package wake sends the NOTIFYs that wake dispatchers, projectors and
// waiting retries after a writer committed, outside the writer's transaction.
//
// Why not pg_notify inside the transaction: PostgreSQL serialises the commits
// of every transaction that notified (PreCommit_Notify holds one database-wide
// lock until the commit record is flushed), so notifying ingest, completion
// and projector transactions queued behind each other's WAL flush instead of
// sharing one. Measured on a saturated run with one forced retry per webhook:
// "Lock:object COMMIT" was the most sampled wait of the database.
//
// A Notifier wakes the listeners of its own process at once (OnLocal), and
// other processes through a NOTIFY sent by one goroutine, coalesced (at most
// one per channel per MinGap) and committed asynchronously
// (synchronous_commit off: a notification is a hint, and a lost one only
// delays a waiter until its fallback poll). Its payload is the notifier's id,
// so a listener in the same process skips what it was already told.
package wake

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/kit"
)

// MinGap is the least time between two NOTIFYs of a channel from one
// process: other processes hear of a burst of commits at most this late.
const MinGap = 2 * time.Millisecond

// Notifier wakes listeners after commits. The zero value is not usable: New.
type Notifier struct {
	pool *pgxpool.Pool
	id   string

	mu      sync.Mutex
	local   map[string][]func()
	pending map[string]bool
	sending bool
}

// New returns a Notifier that sends on pool.
func New(pool *pgxpool.Pool) *Notifier {
	return &Notifier{pool: pool, id: kit.NewID(), local: map[string][]func(){}, pending: map[string]bool{}}
}

// OnLocal registers f to run on every Signal of channel in this process.
// f must not block.
func (n *Notifier) OnLocal(channel string, f func()) {
	n.mu.Lock()
	n.local[channel] = append(n.local[channel], f)
	n.mu.Unlock()
}

// FromSelf reports whether a notification's payload came from this Notifier
// (its local listeners already ran).
func (n *Notifier) FromSelf(payload string) bool { return payload == n.id }

// Signal tells channel's listeners that a transaction committed: this
// process's at once, the others' soon. Call it after the commit; it never
// blocks.
func (n *Notifier) Signal(channel string) {
	n.mu.Lock()
	fs := n.local[channel]
	n.pending[channel] = true
	start := !n.sending
	n.sending = true
	n.mu.Unlock()
	for _, f := range fs {
		f()
	}
	if start {
		go n.send()
	}
}

// send NOTIFYs the pending channels until none is left, then returns: no
// goroutine outlives the last signal by more than MinGap.
func (n *Notifier) send() {
	for {
		n.mu.Lock()
		var chans []string
		for c := range n.pending {
			chans = append(chans, c)
		}
		clear(n.pending)
		if len(chans) == 0 {
			n.sending = false
			n.mu.Unlock()
			return
		}
		n.mu.Unlock()
		n.notify(chans)
		time.Sleep(MinGap)
	}
}

// notify sends one NOTIFY per channel in one statement, whose implicit
// transaction does not wait for its WAL flush (set_config local to it).
func (n *Notifier) notify(chans []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// An error (the database away, the pool closed) loses only hints: the
	// listeners' fallback polls cover.
	_, _ = n.pool.Exec(ctx, NotifySQL, chans, n.id)
}

// NotifySQL is the statement a Notifier sends (exported for connection
// warm-up).
const NotifySQL = `SELECT set_config('synchronous_commit', 'off', true), pg_notify(c, $2) FROM unnest($1::text[]) AS c`
