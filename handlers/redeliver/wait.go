package redeliver

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/wake"
	"github.com/hookstream/hookstream/projections"
)

// projected tells waiting retries that the projector committed attempts:
// one LISTEN connection per process (started by the first waiter, stopped by
// Stop), whatever the number of waiters, so a burst of waiting retries does
// not hold a connection each.
type projected struct {
	pool *pgxpool.Pool
	// wake, when set, is this process's notifier: its own notifications
	// were signalled in process already.
	wake *wake.Notifier

	mu      sync.Mutex
	gen     chan struct{} // closed at the next notification
	started bool
	stop    context.CancelFunc
	done    chan struct{}
}

// next returns a channel closed at the next notification after the call.
// Take it before reading what it signals, so nothing falls in between.
func (p *projected) next() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		p.started = true
		ctx, cancel := context.WithCancel(context.Background())
		p.stop, p.done = cancel, make(chan struct{})
		go p.listen(ctx)
	}
	if p.gen == nil {
		p.gen = make(chan struct{})
	}
	return p.gen
}

func (p *projected) signal() {
	p.mu.Lock()
	if p.gen != nil {
		close(p.gen)
		p.gen = nil
	}
	p.mu.Unlock()
}

// listen holds one LISTEN connection until ctx ends; while it reconnects,
// waiters fall back on their own slow poll.
func (p *projected) listen(ctx context.Context) {
	defer close(p.done)
	for ctx.Err() == nil {
		conn, err := p.pool.Acquire(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if _, err := conn.Exec(ctx, "LISTEN "+projections.ProjectedChannel); err == nil {
			p.signal() // notifications before the LISTEN were missed: look again
			unregister := func() {}
			if p.wake != nil { // this process's projector signals us in process
				unregister = p.wake.Listening(conn.Conn().PgConn().PID())
			}
			for {
				n, err := conn.Conn().WaitForNotification(ctx)
				if err != nil {
					break
				}
				if p.wake == nil || !p.wake.FromSelf(n.Payload) {
					p.signal()
				}
			}
			unregister()
		}
		// A LISTENing connection is not returned to the pool.
		_ = conn.Hijack().Close(context.WithoutCancel(ctx))
	}
}

// Stop ends the listener, if one started, and waits for it.
func (p *projected) Stop() {
	p.mu.Lock()
	stop, done := p.stop, p.done
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// retryPollMax bounds the fallback poll of a waiting retry (when the
// listener is reconnecting or a notification was missed).
const retryPollMax = time.Second
