package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// load is what the engine holds of dest: requests, batches, the tenant's
// lanes and the free lanes.
func (e *Engine) load(dest, tenant string) (requests, batches, tenantLanes, free int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if l := e.inflight[dest]; l != nil {
		requests, batches = l.requests, l.batches
	}
	return requests, batches, e.tenantLanes[tenant], len(e.lanes)
}

// A hand-off reserves room for an idle destination, within a batch (and
// none for a destination with a full batch in flight);
// a claim sized before that reservation publishes only what still fits and
// hands back the rest; an aborted hand-off gives back all it reserved. The
// engine's accounting ends where it began.
func TestHandOffAndClaimShareADestinationsRoom(t *testing.T) {
	pool := pgtest.NewPool(t)
	e := NewEngine(EngineParams{Pool: pool, Lanes: 8, PerDestination: 32})
	bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
	t.Cleanup(func() { _ = bus.Close() })
	var pub message.Publisher = bus
	e.bus.Store(&pub)
	const dest, tenant = "dst", "org/env"
	now := e.p.Now().UTC()
	newJobs := make([]jobs.NewJob, 20)
	for i := range newJobs {
		newJobs[i] = jobs.NewJob{DeliveryID: "d" + string(rune('a'+i)), OrgID: "org", EnvID: "env", DestinationID: dest, Due: now.Add(-time.Second)}
	}
	newJobs[19].Due = now.Add(time.Hour) // not due: never handed over

	take, ticket := e.Reserve(newJobs)
	if ticket == nil {
		t.Fatal("an idle engine reserved nothing")
	}
	taken := 0
	for _, tk := range take {
		if tk {
			taken++
		}
	}
	if taken != batchSize || take[19] {
		t.Fatalf("reserved %d jobs (the one not due: %v), want one batch of %d", taken, take[19], batchSize)
	}
	if r, b, tl, free := e.load(dest, tenant); r != batchSize || b != 1 || tl != 1 || free != 7 {
		t.Fatalf("after the reservation: %d requests, %d batches, tenant lanes %d, %d free lanes", r, b, tl, free)
	}
	if again, _ := e.Reserve(newJobs[:1]); again != nil {
		t.Fatal("a destination with a reservation in flight got a second hand-off")
	}

	// A claim read the destination as idle (room 32) before the reservation.
	claimed := make([]dispatchJob, 32)
	for i := range claimed {
		claimed[i] = dispatchJob{DeliveryID: "c" + string(rune('a'+i)), OrgID: "org", EnvID: "env", DestinationID: dest}
		e.hold(claimed[i].DeliveryID)
	}
	handed, err := e.publish(context.Background(), bus, dest, claimed)
	if err != nil || !handed {
		t.Fatalf("publish = %v, %v; want the jobs that no longer fit handed back", handed, err)
	}
	if r, b, _, free := e.load(dest, tenant); r != batchSize+16 || b != 2 || free != 6 {
		t.Fatalf("after the claim: %d requests, %d batches, %d free lanes; want the room of two batches of 16, no more", r, b, free)
	}
	e.heldMu.Lock()
	stillHeld := len(e.held)
	e.heldMu.Unlock()
	if stillHeld != 16 {
		t.Fatalf("%d claimed jobs held after the claim; want the 16 published (the rest handed back)", stillHeld)
	}

	ticket.Aborted()
	e.finished(dest, tenant, 16, 1, 1) // the published batch ends (the reservation took lane 0, the claim lane 1)
	if r, b, tl, free := e.load(dest, tenant); r != 0 || b != 0 || tl != 0 || free != 8 {
		t.Fatalf("at the end: %d requests, %d batches, tenant lanes %d, %d free lanes; want all given back", r, b, tl, free)
	}
}

// A forming record group goes at once when it holds groupJobs jobs or a
// quarter of the lanes a tenant may hold: each waiting batch holds a lane,
// and with few lanes a full window's wait would leave none free.
func TestRecordGroupGoesBeforeItHoldsTooManyLanes(t *testing.T) {
	pool := pgtest.NewPool(t)
	for _, c := range []struct {
		lanes, batches, jobs int
		due                  bool
	}{
		{lanes: 64, batches: 11, jobs: 11, due: false}, // a tenant may hold 48 lanes: 12 wait at most
		{lanes: 64, batches: 12, jobs: 12, due: true},
		{lanes: 64, batches: 2, jobs: groupJobs, due: true},
		{lanes: 8, batches: 1, jobs: 1, due: true}, // 6 lanes a tenant: one batch is a quarter already
		{lanes: 16, batches: 2, jobs: 2, due: false},
		{lanes: 16, batches: 3, jobs: 3, due: true},
	} {
		e := NewEngine(EngineParams{Pool: pool, Lanes: c.lanes})
		e.group, e.groupJobs = make([]*pendingRecord, c.batches), c.jobs
		if got := e.groupDue(); got != c.due {
			t.Errorf("%d lanes, a group of %d batches (%d jobs): due %v, want %v", c.lanes, c.batches, c.jobs, got, c.due)
		}
	}
}

// A destination still sending one request takes a hand-off as a batch of
// its own (at low load the webhook before is often still in flight); one
// with handoffBusy requests in flight, or all its lanes, is left to claims.
func TestHandOffJoinsANearlyIdleDestination(t *testing.T) {
	pool := pgtest.NewPool(t)
	const dest, tenant = "dst", "org/env"
	newEngine := func(perDest int) *Engine {
		e := NewEngine(EngineParams{Pool: pool, Lanes: 8, PerDestination: perDest})
		bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
		t.Cleanup(func() { _ = bus.Close() })
		var pub message.Publisher = bus
		e.bus.Store(&pub)
		return e
	}
	e := newEngine(32)
	now := e.p.Now().UTC()
	jobsOf := func(prefix string, n int) []jobs.NewJob {
		out := make([]jobs.NewJob, n)
		for i := range out {
			out[i] = jobs.NewJob{DeliveryID: prefix + string(rune('a'+i)), OrgID: "org", EnvID: "env", DestinationID: dest, Due: now.Add(-time.Second)}
		}
		return out
	}
	reserved := func(take []bool) (n int) {
		for _, tk := range take {
			if tk {
				n++
			}
		}
		return n
	}

	first, t1 := e.Reserve(jobsOf("a", 1))
	if t1 == nil || reserved(first) != 1 {
		t.Fatalf("an idle destination: reserved %v", first)
	}
	// One request in flight: a second batch, of at most batchSize.
	second, t2 := e.Reserve(jobsOf("b", batchSize+1))
	if t2 == nil || reserved(second) != batchSize || second[batchSize] {
		t.Fatalf("one request in flight: reserved %d of %d, want a batch of %d", reserved(second), batchSize+1, batchSize)
	}
	if r, b, tl, free := e.load(dest, tenant); r != 1+batchSize || b != 2 || tl != 2 || free != 6 {
		t.Fatalf("after two hand-offs: %d requests, %d batches, tenant lanes %d, %d free lanes", r, b, tl, free)
	}
	if again, _ := e.Reserve(jobsOf("c", 1)); again != nil {
		t.Fatal("a destination with a full batch in flight got a third hand-off")
	}
	t2.Aborted()
	// handoffBusy requests in flight refuse a hand-off, a lane of the
	// destination free or not.
	e.mu.Lock()
	e.inflight[dest].requests = handoffBusy
	e.mu.Unlock()
	if again, _ := e.Reserve(jobsOf("d", 1)); again != nil {
		t.Fatalf("a destination with %d requests in flight got a hand-off", handoffBusy)
	}
	e.mu.Lock()
	e.inflight[dest].requests = 1
	e.mu.Unlock()
	t1.Aborted()
	if r, b, tl, free := e.load(dest, tenant); r != 0 || b != 0 || tl != 0 || free != 8 {
		t.Fatalf("at the end: %d requests, %d batches, tenant lanes %d, %d free lanes; want all given back", r, b, tl, free)
	}

	// A destination that may hold one lane (PerDestination up to batchSize)
	// takes no second batch, however few requests it has in flight.
	one := newEngine(batchSize)
	if _, t3 := one.Reserve(jobsOf("e", 1)); t3 == nil {
		t.Fatal("an idle destination reserved nothing")
	}
	if again, _ := one.Reserve(jobsOf("f", 1)); again != nil {
		t.Fatal("a destination holding its only lane got a second hand-off")
	}
}

// A batch that gave its room back while its record waited takes it again
// for its chained retries only within the destination's bounds: with the
// destination's only lane taken meanwhile it waits, takes the room as soon
// as that lane is given back, and gives up after retakeWait when it is not.
func TestRetakeWaitsForTheDestinationsRoom(t *testing.T) {
	e := NewEngine(EngineParams{Pool: pgtest.NewPool(t), Lanes: 8, PerDestination: batchSize}) // one lane per destination
	const dest, tenant = "dst", "org/env"
	other := func() { // another batch takes the destination's lane
		e.mu.Lock()
		e.inflight[dest] = &destLoad{tenant: tenant, requests: 1, batches: 1}
		e.mu.Unlock()
	}
	other()
	e.retakeWait = time.Minute // the room comes back within it, however busy the machine
	run := &laneRun{dest: dest, tenant: tenant}
	got := make(chan bool, 1)
	go func() { got <- e.retake(run, 2) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.mu.Lock()
		waiting := e.roomFreed != nil
		e.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("retake neither took the full destination's room nor waited for it")
		}
		time.Sleep(time.Millisecond)
	}
	e.finished(dest, tenant, 1, 1, -1) // the other batch is done
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("retake gave up although the room was given back")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("retake still waits after the room was given back")
	}
	if r, b, _, _ := e.load(dest, tenant); r != 2 || b != 1 || run.requests != 2 || run.batches != 1 || run.released() {
		t.Fatalf("after retake: destination holds %d requests in %d batches, the run %d in %d, want 2 in 1", r, b, run.requests, run.batches)
	}
	e.finished(dest, tenant, run.requests, run.batches, -1)

	other()
	e.retakeWait = retakeWait
	run = &laneRun{dest: dest, tenant: tenant}
	start := time.Now()
	if e.retake(run, 1) {
		t.Fatal("retake took a lane the destination does not have")
	}
	if waited := time.Since(start); waited < retakeWait {
		t.Errorf("retake gave up after %s, before retakeWait (%s)", waited, retakeWait)
	}
	if r, b, _, _ := e.load(dest, tenant); r != 1 || b != 1 || !run.released() {
		t.Fatalf("after a retake that gave up: destination holds %d requests in %d batches (want the other's 1 in 1), run released %v", r, b, run.released())
	}
}
