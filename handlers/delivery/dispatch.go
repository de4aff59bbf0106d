package delivery

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/signing"
)

// dispatchJob is a claimed job with everything the HTTP call needs.
type dispatchJob struct {
	DeliveryID    string             `json:"delivery_id"`
	OrgID         string             `json:"org_id"`
	EnvID         string             `json:"env_id"`
	EventID       string             `json:"event_id"`
	DestinationID string             `json:"destination_id"`
	AttemptID     string             `json:"attempt_id"`
	AttemptNumber int                `json:"attempt_number"`
	Version       int64              `json:"version"`
	BodyB64       string             `json:"body_b64"`
	ContentType   string             `json:"content_type"`
	DestFound     bool               `json:"dest_found"`
	URL           string             `json:"url"`
	Method        string             `json:"method"`
	Headers       map[string]string  `json:"headers"`
	TimeoutMS     int                `json:"timeout_ms"`
	Retry         domain.RetryPolicy `json:"retry"`
	DestStatus    string             `json:"dest_status"`
	DisabledWhy   string             `json:"disabled_reason"`
	Signing       *signing.Config    `json:"signing"`
	PrevSecret    string             `json:"prev_secret"`
	// SendURL is the URL requested, userinfo included; URL (what attempts
	// record) has it masked.
	SendURL string `json:"send_url"`
	// Unsendable, when set, is why no request may be made (a secret that
	// does not decrypt, a signing config without its secret): fail closed.
	Unsendable string `json:"unsendable,omitempty"`
	// BreakerOn is whether the destination's circuit breaker was on at the
	// claim: a failed batch of such a destination is recorded on the locked
	// path at once (the circuit counts the failure).
	BreakerOn bool `json:"-"`
	// ClaimedAt is when the job was claimed, and DestUpdatedAt the
	// destination's updated_at then: a retry chained from this job reuses
	// what the claim read only while the destination is unchanged, and for
	// at most chainWindow after the claim.
	ClaimedAt     time.Time `json:"-"`
	DestUpdatedAt time.Time `json:"-"`
	// State is the delivery as its job row describes it, when the row has a
	// snapshot: recording the attempt then needs no stream load.
	State *domain.DeliveryState `json:"-"`
	// Manual is a manual retry's attempt: its API call waits for the
	// outcome, so it is recorded and projected without waiting for company.
	Manual bool `json:"-"`
}

func (e *Engine) dispatch(ctx context.Context, bus message.Publisher) {
	listenDone := make(chan struct{})
	go func() { defer close(listenDone); e.listen(ctx) }()
	defer func() { <-listenDone }()
	ticker := time.NewTicker(e.p.Poll)
	defer ticker.Stop()
	for {
		// Claims are at least claimCooldown apart: wake-ups arriving meanwhile
		// (a commit per webhook at low load) are served by one claim.
		if wait := claimCooldown - e.p.Now().Sub(e.lastClaim); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		e.lastClaim = e.p.Now()
		for {
			more, err := e.claimAndPublish(ctx, bus)
			if err != nil {
				if ctx.Err() == nil {
					e.p.Log.Error("dispatch", "err", err)
				}
				break
			}
			if !more {
				break // the claim took every due job it could: wait for a wake-up
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		case <-ticker.C:
		}
	}
}

// listen turns NOTIFY hookstream_jobs (sent when jobs become due now) into
// wake-ups; polling stays the fallback.
func (e *Engine) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := e.p.Pool.Acquire(ctx)
		if err != nil {
			select { // the database is away: the poll covers, try again in a second
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if _, err := conn.Exec(ctx, "LISTEN "+jobs.Channel); err == nil {
			// This process's own commits wake us in process: they need no NOTIFY for this connection.
			unregister := e.p.Wake.Listening(conn.Conn().PgConn().PID())
			for {
				n, err := conn.Conn().WaitForNotification(ctx)
				if err != nil {
					break
				}
				if !e.p.Wake.FromSelf(n.Payload) { // this process's own commits woke us already
					e.notified()
				}
			}
			unregister()
		}
		// A LISTENing connection is not returned to the pool; closing it can only fail on a dead connection.
		_ = conn.Hijack().Close(context.WithoutCancel(ctx))
	}
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// notified is a NOTIFY hookstream_jobs: new jobs (the dispatcher) and new
// events (the projector).
func (e *Engine) notified() {
	e.poke()
	e.projector.Wake()
}

// retake gives a batch that gave its room back while its record waited
// (laneRun.sent) the room for n chained attempts again, within the bounds
// a claim or a hand-off keeps (the destination's requests and lanes). At
// low load the room was often taken meanwhile by a webhook handed off
// while the record waited, whose request takes a few milliseconds: retake
// waits for room up to e.retakeWait (retakeWait), then gives up (false).
// The batch still holds its lane throughout. Like a chain that held its
// room, a retry taken again does not queue behind a backlog of its
// destination (a claim, woken when the room was given back, has usually
// taken that backlog's first jobs by then, and the retry waits or gives up).
func (e *Engine) retake(r *laneRun, n int) bool {
	var timer *time.Timer
	for {
		e.mu.Lock()
		if n <= e.room(e.inflight[r.dest]) { // n < batchSize: a free lane of the destination's is room for all
			load := e.loadFor(r.dest, r.tenant)
			load.requests += n
			load.batches++
			e.mu.Unlock()
			r.requests, r.batches = n, 1
			return true
		}
		if e.roomFreed == nil {
			e.roomFreed = make(chan struct{})
		}
		freed := e.roomFreed
		e.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(e.retakeWait)
			defer timer.Stop()
		}
		select {
		case <-freed:
		case <-timer.C:
			return false
		}
	}
}

// retakeWait bounds how long chained retries wait for their destination's
// room before they give their leases back and are claimed.
const retakeWait = 50 * time.Millisecond

// finished returns n requests and b batches of a destination, and a lane
// that tenant held (when lane >= 0).
func (e *Engine) finished(dest, tenant string, n, b, lane int) {
	e.mu.Lock()
	if l := e.inflight[dest]; l != nil {
		l.requests -= n
		l.batches -= b
		if l.requests <= 0 && l.batches <= 0 {
			delete(e.inflight, dest)
		}
	}
	// The lane is the tenant's whether or not the destination's room was
	// given back before (laneRun.sent).
	if lane >= 0 {
		if e.tenantLanes[tenant]--; e.tenantLanes[tenant] <= 0 {
			delete(e.tenantLanes, tenant)
		}
	}
	if e.roomFreed != nil {
		close(e.roomFreed)
		e.roomFreed = nil
	}
	e.mu.Unlock()
	if lane >= 0 {
		e.lanes <- lane
	}
	if e.capped.Load() {
		e.poke() // due jobs were left behind for want of room: claim them now
	}
}
