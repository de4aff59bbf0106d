package delivery

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
)

// The ingest hand-off: when ingest runs in the engine's process, a webhook's
// new jobs that have room right now are leased in the ingest's own
// transaction (jobs.InsertTakeSQL) and go to a lane once it commits,
// instead of waking the dispatcher for a claim. At low load that is one
// statement and one round trip fewer per webhook, and no dispatcher hop.
//
// The room is reserved before the commit, only for a destination with
// fewer than handoffBusy requests in flight, within the bounds a claim uses
// (a batch of at most 16, the destination's room and lanes, the tenant's
// share of the lanes, a free lane), and only while no due job is known to
// be waiting for room (backlog): a backlog is served by claims,
// in due order, and new jobs do not overtake it. A claim running meanwhile
// was sized on the room it read before; it hands back what no longer fits
// (publish). What the database decides (a paused destination or route, a
// circuit not closed) is checked in the insert itself; a job it refuses is
// inserted unleased and claimed like any other.

// handoffGroup is the jobs of one destination reserved on one lane.
type handoffGroup struct {
	dest, tenant string
	lane         int
	reserved     int
	room         int // the most it may reserve
	jobs         []dispatchJob
}

// handoffBusy is how many requests a destination may have in flight and
// still take a hand-off (as a batch of its own, within its lanes).
const handoffBusy = 2

// handoff is one ingest commit's reservation (a jobs.Ticket).
type handoff struct {
	e      *Engine
	bus    message.Publisher
	at     time.Time
	groups []*handoffGroup
	err    error // Read failed
	// partial: some of the new jobs were not reserved (no room, not due)
	partial bool
	// sent: the webhooks of reserved jobs the ingest holds (NewJob.Sent),
	// which the insert does not read back (jobs.InsertTakeSQLFor)
	sent map[string]*jobs.Sent
}

// Reserve implements jobs.Handoff.
func (e *Engine) Reserve(newJobs []jobs.NewJob) ([]bool, jobs.Ticket) {
	bus := e.bus.Load()
	if bus == nil || e.draining.Load() || e.backlog.Load() {
		return nil, nil
	}
	now := e.p.Now().UTC()
	h := &handoff{e: e, bus: *bus, at: now}
	take := make([]bool, len(newJobs))
	byDest := map[string]*handoffGroup{}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, j := range newJobs {
		if j.Due.After(now) {
			continue
		}
		g := byDest[j.DestinationID]
		if g == nil {
			tenant := j.OrgID + "/" + j.EnvID
			// Only to a destination that is idle or nearly so: a busy one
			// is served by claims, which fill its lanes with larger batches
			// (handed-off batches are one ingest commit's jobs, and a
			// saturated run spent a third more PostgreSQL CPU per delivery
			// recording many small ones). At low load a destination is
			// often still sending the webhook before (a commit and a
			// request take a few milliseconds), and refusing it then sent
			// about half of the webhooks at 150/s through a claim of one.
			load := e.inflight[j.DestinationID]
			if load != nil && (load.requests >= handoffBusy || load.batches >= e.maxBatches()) {
				continue
			}
			if e.tenantLanes[tenant] >= e.p.PerTenantLanes {
				continue
			}
			var lane int
			select {
			case lane = <-e.lanes:
			default:
				continue // every lane busy
			}
			load = e.loadFor(j.DestinationID, tenant)
			g = &handoffGroup{dest: j.DestinationID, tenant: tenant, lane: lane,
				room: min(batchSize, e.room(load))} // the check above left it a lane: its requests decide
			load.batches++
			e.tenantLanes[tenant]++
			byDest[j.DestinationID] = g
			h.groups = append(h.groups, g)
		}
		if g.reserved >= g.room {
			continue
		}
		g.reserved++
		e.inflight[j.DestinationID].requests++
		take[i] = true
		if j.Sent != nil {
			if h.sent == nil {
				h.sent = map[string]*jobs.Sent{}
			}
			h.sent[j.DeliveryID] = j.Sent
		}
	}
	for _, t := range take {
		h.partial = h.partial || !t
	}
	if len(h.groups) == 0 {
		return nil, nil
	}
	return take, h
}

// Lease implements jobs.Ticket.
func (h *handoff) Lease() (time.Time, string, time.Duration) {
	return h.at, h.e.p.WorkerID, h.e.p.LeaseTTL
}

// Read implements jobs.Ticket: the jobs the insert leased, by destination.
// The statement's own error (it then failed, and the transaction with it)
// is returned; a row this process cannot read is not, so the webhook is
// still stored: nothing is sent now, and the leases run out for claims.
func (h *handoff) Read(rows pgx.Rows) error {
	taken, err := h.e.scanClaimed(rows, h.at)
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
		h.err = err
		return err
	}
	for i := range taken {
		if s := h.sent[taken[i].DeliveryID]; s != nil {
			taken[i].BodyB64, taken[i].ContentType = s.BodyB64, s.ContentType
		}
	}
	for _, j := range taken {
		for _, g := range h.groups {
			if g.dest == j.DestinationID {
				g.jobs = append(g.jobs, j)
			}
		}
	}
	for _, g := range h.groups {
		if err == nil && len(g.jobs) > g.reserved {
			err = fmt.Errorf("the insert leased %d jobs of destination %s, %d were reserved", len(g.jobs), g.dest, g.reserved)
		}
	}
	if err != nil {
		h.e.p.Log.Error("hand-off of ingested jobs: not sent now, claimed once their leases run out", "err", err)
		h.err = err
	}
	return nil
}

// Committed implements jobs.Ticket: each destination's leased jobs go to
// the lane reserved for them; what was reserved and not leased is given back.
//
// Jobs are not sent when their rows could not be read, when the engine
// began to stop, or when the commit took so long that less than half the
// lease is left (the heartbeat, every third of it, might not extend it in
// time, and another worker could claim the job while this one sends it):
// their leases then run out and claims take them.
func (h *handoff) Committed() bool {
	took := h.e.p.Now().UTC().Sub(h.at)
	if late := took > h.e.p.LeaseTTL/2; h.err != nil || late || h.e.draining.Load() {
		if late {
			h.e.p.Log.Warn("ingest commit outlasted half the lease: its jobs are left to claims", "took", took)
		}
		h.Aborted()
		return false
	}
	all := !h.partial
	for _, g := range h.groups {
		if left := g.reserved - len(g.jobs); left > 0 {
			all = false
			if len(g.jobs) == 0 {
				h.e.finished(g.dest, g.tenant, left, 1, g.lane)
				continue
			}
			h.e.finished(g.dest, g.tenant, left, 0, -1)
		}
		for _, j := range g.jobs {
			h.e.hold(j.DeliveryID)
		}
		msg := message.NewMessage(kit.NewID(), nil)
		h.e.batches.Store(msg.UUID, g.jobs)
		msg.Metadata.Set("lane", strconv.Itoa(g.lane))
		msg.Metadata.Set("destination_id", g.dest)
		if err := h.bus.Publish(laneTopic(g.lane), msg); err != nil {
			// The engine is closing: the leases run out (or are released at
			// its shutdown) and the jobs are claimed again.
			h.e.batches.Delete(msg.UUID)
			h.e.release(g.jobs)
			h.e.finished(g.dest, g.tenant, len(g.jobs), 1, g.lane)
			all = false
			continue
		}
		h.e.p.Metrics.Dispatched("handoff", len(g.jobs))
	}
	h.e.projector.Wake()
	return all
}

// Aborted implements jobs.Ticket: the insert did not commit.
func (h *handoff) Aborted() {
	for _, g := range h.groups {
		h.e.finished(g.dest, g.tenant, g.reserved, 1, g.lane)
	}
}
