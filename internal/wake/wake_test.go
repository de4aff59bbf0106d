package wake_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/internal/wake"
)

// A signal runs this process's listeners at once and reaches another
// process's LISTEN, carrying the sender's id; a burst of signals is
// coalesced into far fewer NOTIFYs.
func TestSignalWakesLocalListenersAndNotifiesOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pool := pgtest.NewPool(t)
	listener, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Release()
	if _, err := listener.Exec(ctx, "LISTEN test_channel"); err != nil {
		t.Fatal(err)
	}

	n := wake.New(pool)
	var local atomic.Int32
	n.OnLocal("test_channel", func() { local.Add(1) })
	n.OnLocal("other_channel", func() { t.Error("a listener of another channel ran") })
	const signals = 200
	for range signals {
		n.Signal("test_channel")
	}
	if got := local.Load(); got != signals {
		t.Fatalf("local listener ran %d times for %d signals, want each at once", got, signals)
	}

	first, err := listener.Conn().WaitForNotification(ctx)
	if err != nil {
		t.Fatalf("no NOTIFY reached another connection: %v", err)
	}
	if first.Channel != "test_channel" || !n.FromSelf(first.Payload) {
		t.Fatalf("notification %q %q: want test_channel with the notifier's id", first.Channel, first.Payload)
	}
	if wake.New(pool).FromSelf(first.Payload) {
		t.Fatal("another notifier took the payload for its own")
	}
	// Count what the burst sent: everything that arrives within a quiet
	// second after the last one.
	received := 1
	for {
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		_, err := listener.Conn().WaitForNotification(wctx)
		wcancel()
		if err != nil {
			break
		}
		received++
	}
	if received >= signals/2 {
		t.Fatalf("%d NOTIFYs for %d signals: not coalesced", received, signals)
	}

	// A signal after the burst (the sender went idle) is sent too.
	n.Signal("test_channel")
	if _, err := listener.Conn().WaitForNotification(ctx); err != nil {
		t.Fatalf("a signal after an idle spell sent no NOTIFY: %v", err)
	}
}

// A NOTIFY that only this process's own listeners would hear is not sent;
// once another backend LISTENs on the channel, signals reach it.
func TestSignalNotifiesOnlyChannelsOthersListenOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pool := pgtest.NewPool(t)
	n := wake.New(pool)
	n.PeerCheck = -1 // read the others' LISTENs before every NOTIFY
	settle := func() {
		t.Helper()
		for !n.Idle() {
			if ctx.Err() != nil {
				t.Fatal("the notifier never went idle")
			}
			time.Sleep(time.Millisecond)
		}
	}
	listen := func(channel string) *pgxpool.Conn {
		t.Helper()
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "LISTEN "+channel); err != nil {
			t.Fatal(err)
		}
		return c
	}

	own := listen("own_channel")
	defer own.Release()
	unregister := n.Listening(own.Conn().PgConn().PID())
	n.Signal("own_channel")
	n.Signal("nobody_channel")
	settle()
	if sent := n.Sent(); sent != 0 {
		t.Fatalf("%d NOTIFYs sent that no other backend listens for", sent)
	}

	peer := listen("own_channel") // another process's listener, not registered
	n.Signal("own_channel")
	got, err := peer.Conn().WaitForNotification(ctx)
	if err != nil || got.Channel != "own_channel" || !n.FromSelf(got.Payload) {
		t.Fatalf("the other listener got %+v, %v", got, err)
	}

	// Unregistered, this process's listener counts as another's.
	unregister()
	peerPID := peer.Conn().PgConn().PID()
	if err := peer.Hijack().Close(ctx); err != nil {
		t.Fatal(err)
	}
	for { // the closed backend leaves pg_stat_activity
		var left bool
		if err := pool.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)`, peerPID).Scan(&left); err != nil || left || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	settle()
	before := n.Sent()
	n.Signal("own_channel")
	settle()
	if n.Sent() != before+1 {
		t.Fatal("a listener no longer registered got no NOTIFY")
	}
	if got, err := own.Conn().WaitForNotification(ctx); err != nil || got.Channel != "own_channel" {
		t.Fatalf("the unregistered listener got %+v, %v", got, err)
	}
}
