package redeliver

import (
	"context"
	"testing"
	"time"

	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/projections"
)

// A waiting retry is woken by the projector's NOTIFY, through the one
// listener the process shares, and Stop ends that listener.
func TestWaitersWakeOnProjectedNotify(t *testing.T) {
	pool := pgtest.NewPool(t)
	p := &projected{pool: pool}
	defer p.Stop()
	first := p.next() // starts the listener, which signals once it listens
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not start")
	}
	woken := p.next()
	select {
	case <-woken:
		t.Fatal("woken without a notification")
	default:
	}
	if _, err := pool.Exec(context.Background(), `SELECT pg_notify('`+projections.ProjectedChannel+`', '')`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case <-time.After(10 * time.Second):
		t.Fatal("a NOTIFY did not wake the waiter")
	}
	p.Stop()
	select {
	case <-p.done:
	default:
		t.Fatal("Stop returned before the listener ended")
	}
}
