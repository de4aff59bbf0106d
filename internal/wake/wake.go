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
//
// A NOTIFY nobody else hears is not sent at all. The LISTEN connections of
// the process register with its Notifier (Listening); at most once per
// PeerCheck it reads from pg_stat_activity which channels other backends
// last ran LISTEN on (an idle listener's last statement), and it notifies
// only those channels. When that cannot be known (track_activities off,
// another role's sessions hidden) it notifies every channel. A process that
// starts listening is heard from within PeerCheck; until then its fallback
// poll covers. A single engine at 150 webhooks/s saved a statement and a
// round trip per webhook, and the signal PostgreSQL sends every listener.
package wake

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/kit"
)

// MinGap is the least time between two NOTIFYs of a channel from one
// process: other processes hear of a burst of commits at most this late.
const MinGap = 2 * time.Millisecond

// PeerCheck is how long a Notifier trusts what it read of other backends'
// LISTENs.
const PeerCheck = time.Second

// Notifier wakes listeners after commits. The zero value is not usable: New.
type Notifier struct {
	pool *pgxpool.Pool
	id   string
	// PeerCheck overrides the package's PeerCheck (tests: a negative value
	// reads other backends' LISTENs before every NOTIFY).
	PeerCheck time.Duration

	mu      sync.Mutex
	local   map[string][]func()
	pending map[string]bool
	sending bool
	own     map[uint32]int // backend pids of this process's LISTEN connections

	// sender goroutine only
	peers     map[string]bool // channels other backends listen on; nil: every channel
	peersRead time.Time

	sent atomic.Int64
}

// New returns a Notifier that sends on pool.
func New(pool *pgxpool.Pool) *Notifier {
	return &Notifier{pool: pool, id: kit.NewID(), local: map[string][]func(){}, pending: map[string]bool{}, own: map[uint32]int{}}
}

// Peer detection relies on a listener's last statement being its LISTEN:
// every listener of hookstream holds a connection of its own (never
// returned to the pool), runs one LISTEN on it and then only waits for
// notifications. A listener that ran anything after its LISTEN would look
// like no listener to the other processes, and they would stop notifying it.

// Listening registers pid, the backend of a LISTEN connection of this
// process (which hears its signals in process): a NOTIFY is not sent for
// it alone. Call the returned function when the connection stops listening.
func (n *Notifier) Listening(pid uint32) (done func()) {
	n.mu.Lock()
	n.own[pid]++
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		if n.own[pid]--; n.own[pid] <= 0 {
			delete(n.own, pid)
		}
		n.mu.Unlock()
	}
}

// Sent is how many NOTIFY statements the Notifier has sent.
func (n *Notifier) Sent() int64 { return n.sent.Load() }

// Idle reports whether no NOTIFY is waiting to be sent or being sent.
func (n *Notifier) Idle() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.sending
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
func (n *Notifier) Signal(channel string) { n.signal(channel, true) }

// SignalOthers is Signal for other processes only: this process's
// listeners already know (the ingest hand-off gave its engine the jobs).
func (n *Notifier) SignalOthers(channel string) { n.signal(channel, false) }

func (n *Notifier) signal(channel string, local bool) {
	n.mu.Lock()
	var fs []func()
	if local {
		fs = n.local[channel]
	}
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

// notify sends one NOTIFY per channel another backend listens on, in one
// statement whose implicit transaction does not wait for its WAL flush
// (set_config local to it).
func (n *Notifier) notify(chans []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if peers := n.peerChannels(ctx); peers != nil {
		heard := chans[:0]
		for _, c := range chans {
			if peers[c] {
				heard = append(heard, c)
			}
		}
		if chans = heard; len(chans) == 0 {
			return
		}
	}
	// An error (the database away, the pool closed) loses only hints: the
	// listeners' fallback polls cover.
	n.sent.Add(1)
	_, _ = n.pool.Exec(ctx, NotifySQL, chans, n.id)
}

// peerChannels returns the channels backends other than this process's
// listeners last ran LISTEN on, read at most once per PeerCheck; nil when
// that cannot be known (then every channel is notified).
func (n *Notifier) peerChannels(ctx context.Context) map[string]bool {
	every := n.PeerCheck
	if every == 0 {
		every = PeerCheck
	}
	if !n.peersRead.IsZero() && time.Since(n.peersRead) < every {
		return n.peers
	}
	n.mu.Lock()
	own := make([]int64, 0, len(n.own))
	for pid := range n.own {
		own = append(own, int64(pid))
	}
	n.mu.Unlock()
	var tracked bool
	var queries []string
	err := n.pool.QueryRow(ctx, peersSQL, own).Scan(&tracked, &queries)
	n.peersRead = time.Now()
	if err != nil || !tracked {
		n.peers = nil
		return nil
	}
	peers := map[string]bool{}
	for _, q := range queries {
		if q == "<insufficient privilege>" {
			n.peers = nil // another role's sessions are hidden: they may listen
			return nil
		}
		c := strings.TrimSpace(strings.TrimRight(strings.TrimSpace(q[len("LISTEN "):]), ";"))
		peers[strings.ToLower(strings.Trim(c, `"`))] = true
	}
	n.peers = peers
	return peers
}

// peersSQL reads whether sessions' statements are tracked, and the last
// statement of every other backend of the database that last ran LISTEN
// (an idle listener waits with it) or whose statements are hidden.
const peersSQL = `SELECT current_setting('track_activities') = 'on',
	coalesce((SELECT array_agg(a.query) FROM pg_stat_activity a
		WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND NOT (a.pid = ANY($1::int8[]))
		  AND (a.query ILIKE 'LISTEN %' OR a.query = '<insufficient privilege>')), '{}')`

// NotifySQL is the statement a Notifier sends (exported for connection
// warm-up).
const NotifySQL = `SELECT set_config('synchronous_commit', 'off', true), pg_notify(c, $2) FROM unnest($1::text[]) AS c`
