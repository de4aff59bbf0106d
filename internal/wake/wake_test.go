package wake_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

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
