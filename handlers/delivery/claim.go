package delivery

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/circuit"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/handlers/signing"
	"github.com/hookstream/hookstream/internal/kit"
)

// claimAndPublish claims due jobs within each destination's free capacity
// and hands each destination's jobs, in batches, to free lanes. It reports
// whether the claim was cut short by its limit (more may be due now).
func (e *Engine) claimAndPublish(ctx context.Context, bus message.Publisher) (bool, error) {
	// Until this claim is published, a batch that finishes wakes the
	// dispatcher again: it may free the room this claim did not see.
	e.capped.Store(true)
	free := len(e.lanes) * batchSize
	if free == 0 {
		return false, nil // every lane busy: the next finished batch wakes us
	}
	dests, rooms, fullTenants := e.rooms()
	// Circuits are checked for cooldowns and probes at most every 50 ms,
	// not on every claim: a healthy engine pays one cheap query for it.
	var probes []string
	if now := e.p.Now(); now.Sub(e.lastProbeCheck) >= 50*time.Millisecond {
		e.lastProbeCheck = now
		var err error
		if probes, err = circuit.Probes(ctx, e.p.Pool, e.p.Store, e.p.Now().UTC()); err != nil {
			return false, err
		}
	}
	var batch []dispatchJob
	more := false
	for pass, only := range [][]string{probes, nil} {
		if pass == 0 && len(only) == 0 {
			continue // no probes: one claim, not two (a nil probe list claimed like the second pass)
		}
		limit := free - len(batch)
		claimed, err := e.claim(ctx, dests, rooms, fullTenants, limit, only)
		if err != nil {
			e.release(batch) // the probes claimed before: their leases run out
			return false, err
		}
		more = only == nil && limit > 0 && len(claimed) == limit
		batch = append(batch, claimed...)
	}
	byDest := map[string][]dispatchJob{}
	var order []string
	// A destination with no room, or one whose room the claim filled, may have
	// due jobs left: then a finished batch wakes the dispatcher.
	full := false
	for _, r := range rooms {
		full = full || r <= 0
	}
	handed := false // jobs went back for want of a lane
	defer func() {
		left := more || full || handed || e.roomExhausted(byDest, dests, rooms)
		e.capped.Store(left)
		e.backlog.Store(left)
	}()
	for _, j := range batch {
		if _, ok := byDest[j.DestinationID]; !ok {
			order = append(order, j.DestinationID)
		}
		byDest[j.DestinationID] = append(byDest[j.DestinationID], j)
	}
	for i, dest := range order {
		back, err := e.publish(ctx, bus, dest, byDest[dest])
		handed = handed || back
		if err != nil {
			// The destinations not reached are not held any longer: their
			// leases run out and the jobs are claimed again.
			for _, rest := range order[i+1:] {
				e.release(byDest[rest])
			}
			return false, err
		}
	}
	return more, nil
}

// roomExhausted reports whether a claim took all the room a destination
// had (so due jobs of it may have been left behind).
func (e *Engine) roomExhausted(byDest map[string][]dispatchJob, dests []string, rooms []int32) bool {
	defaultRoom := e.room(nil)
	for d, got := range byDest {
		room := defaultRoom
		for i, known := range dests {
			if known == d {
				room = int(rooms[i])
			}
		}
		if len(got) >= room {
			return true
		}
	}
	return false
}

// publish hands one destination's claimed jobs to lanes, batchSize at a time.
// A claim never exceeds the destination's room; when the free lanes run out
// (other destinations took them), the rest is handed back (reported true).
func (e *Engine) publish(ctx context.Context, bus message.Publisher, dest string, group []dispatchJob) (bool, error) {
	tenant := tenantOf(group[0])
	e.mu.Lock()
	load := e.loadFor(dest, tenant)
	// The claim was sized on the room it read; the ingest hand-off may have
	// taken some of it since. What no longer fits goes back.
	room := e.room(load)
	var over []dispatchJob
	if len(group) > room {
		group, over = group[:room], group[room:]
	}
	chunks := (len(group) + batchSize - 1) / batchSize
	load.requests += len(group)
	load.batches += chunks
	e.mu.Unlock()
	if len(over) > 0 {
		if err := e.handBack(ctx, over); err != nil {
			e.finished(dest, tenant, len(group), chunks, -1)
			e.release(group)
			return true, err
		}
		if len(group) == 0 {
			e.finished(dest, tenant, 0, 0, -1) // forget an empty load
			return true, nil
		}
	}
	for len(group) > 0 {
		chunk := group[:min(batchSize, len(group))]
		group = group[len(chunk):]
		lane, ok := e.takeLane(tenant)
		if !ok {
			// No free lane (other destinations hold them) or the tenant holds
			// its share: hand these jobs back now rather than wait with their
			// leases running. The dispatcher never waits for a lane.
			left := append(append([]dispatchJob(nil), chunk...), group...)
			e.finished(dest, tenant, len(left), chunks, -1)
			return true, e.handBack(ctx, left)
		}
		chunks--
		// The lanes are in process: the message carries the batch's id, and
		// the jobs (secrets included) never leave memory or get encoded.
		msg := message.NewMessage(kit.NewID(), nil)
		e.batches.Store(msg.UUID, chunk)
		msg.Metadata.Set("lane", strconv.Itoa(lane))
		msg.Metadata.Set("destination_id", dest)
		if err := bus.Publish(laneTopic(lane), msg); err != nil {
			e.batches.Delete(msg.UUID)
			e.release(chunk) // their leases expire; the jobs run again
			e.release(group)
			e.finished(dest, tenant, len(chunk)+len(group), chunks+1, lane)
			return false, fmt.Errorf("publish batch: %w", err)
		}
		e.p.Metrics.Dispatched("claim", len(chunk))
	}
	return len(over) > 0, nil
}

// takeLane takes a free lane for tenant unless none is free or the tenant
// holds PerTenantLanes already; finished gives it back.
func (e *Engine) takeLane(tenant string) (int, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tenantLanes[tenant] >= e.p.PerTenantLanes {
		return 0, false
	}
	select {
	case lane := <-e.lanes:
		e.tenantLanes[tenant]++
		return lane, true
	default:
		return 0, false
	}
}

// handBack releases the leases of claimed jobs that were not sent.
func (e *Engine) handBack(ctx context.Context, batch []dispatchJob) error {
	defer e.release(batch)
	if err := e.releaseLeased(ctx, batch); err != nil {
		return fmt.Errorf("hand back jobs: %w", err)
	}
	return nil
}

// releaseLeased releases the leases of jobs this worker holds and will not
// send; the heartbeat stops extending them once their batch ends.
func (e *Engine) releaseLeased(ctx context.Context, batch []dispatchJob) error {
	ids := make([]string, len(batch))
	for i, j := range batch {
		ids[i] = j.DeliveryID
	}
	_, err := e.p.Pool.Exec(context.WithoutCancel(ctx), jobs.ReleaseSQL, ids, e.p.WorkerID)
	return err
}

// claim leases due jobs: at most limit, each destination within its room
// (dests/rooms; others PerDestination), only the given ones when only is
// not nil.
func (e *Engine) claim(ctx context.Context, dests []string, rooms []int32, fullTenants []string, limit int, only []string) ([]dispatchJob, error) {
	if only != nil {
		limit = len(only)
	}
	if limit <= 0 {
		return nil, nil
	}
	defaultRoom := e.room(nil)
	claimedAt := e.p.Now().UTC()
	// On its generic plan (kit.SendTx): left to choose, PostgreSQL planned
	// the claim afresh on each of its first calls on every connection (2.6
	// ms a plan, against about 1 ms to run it).
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(jobs.ClaimSQL, claimedAt, limit, dests, rooms, defaultRoom, only, e.p.WorkerID, e.p.LeaseTTL, e.lastDest, fullTenants)
	var batch []dispatchJob
	err := kit.SendTx(ctx, e.p.Pool, false, b, func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("claim jobs: %w", err)
		}
		batch, err = e.scanClaimed(rows, claimedAt)
		return err
	})
	if err != nil {
		return nil, err
	}
	// Held (their leases heartbeated) only once the claim is read whole: a
	// claim that fails midway holds nothing, and its leases run out.
	for _, j := range batch {
		e.hold(j.DeliveryID)
	}
	if len(batch) > 0 && only == nil {
		e.lastDest = lastServed(batch, e.lastDest)
	}
	return batch, nil
}

// scanClaimed reads leased jobs as ClaimSQL and InsertTakeSQL return them
// (claimedSelect's columns), leased at claimedAt. It closes rows.
func (e *Engine) scanClaimed(rows pgx.Rows, claimedAt time.Time) ([]dispatchJob, error) {
	defer rows.Close()
	var batch []dispatchJob
	for rows.Next() {
		var j dispatchJob
		var headers, intervals, signingRaw []byte
		var prevValid bool
		var sealed, trigger string
		var due time.Time
		var autoRetries, lastNumber *int32
		var reopened *string
		var destAt *time.Time
		if err := rows.Scan(&j.DeliveryID, &j.OrgID, &j.EnvID, &j.EventID, &j.DestinationID, &j.AttemptID, &j.AttemptNumber, &j.Version,
			&j.BodyB64, &j.ContentType, &j.DestFound, &j.URL, &j.Method, &headers, &j.TimeoutMS,
			&j.Retry.Enabled, &j.Retry.MaxRetries, &j.Retry.Backoff, &intervals, &j.DestStatus, &j.DisabledWhy, &signingRaw, &prevValid, &sealed,
			&trigger, &due, &autoRetries, &lastNumber, &reopened, &j.BreakerOn, &destAt); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan claimed job: %w", err)
		}
		j.ClaimedAt, j.Manual = claimedAt, trigger == domain.TriggerManual
		if destAt != nil {
			j.DestUpdatedAt = *destAt
		}
		j.State = jobs.Snapshot(j.Version, j.EventID, domain.PlannedAttempt{ID: j.AttemptID, Number: j.AttemptNumber, Trigger: trigger, Due: due},
			autoRetries, lastNumber, reopened)
		e.openJobSecrets(&j, headers, signingRaw, sealed, prevValid)
		if err := json.Unmarshal(intervals, &j.Retry.Intervals); err != nil && j.Unsendable == "" {
			// One bad row fails its own job, not the claim (whose leases are taken).
			j.Unsendable = "destination retry_intervals are unreadable"
		}
		batch = append(batch, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read claimed jobs: %w", err)
	}
	return batch, nil
}

// lastServed is the destination a claim served last in its round-robin
// order (destinations after prev first, then from the start): the highest
// one at or below prev when the claim wrapped around, else the highest.
func lastServed(batch []dispatchJob, prev string) string {
	var after, wrapped string
	for _, j := range batch {
		if d := j.DestinationID; d > prev {
			after = max(after, d)
		} else {
			wrapped = max(wrapped, d)
		}
	}
	if wrapped != "" {
		return wrapped
	}
	return after
}

// openJobSecrets fills a claimed job's headers, signing config and request
// URL, decrypting the destination's secrets. Anything that does not decode
// or decrypt makes the job unsendable: it fails without a request, rather
// than going out unsigned or without its credentials.
func (e *Engine) openJobSecrets(j *dispatchJob, headers, signingRaw []byte, sealed string, prevValid bool) {
	j.SendURL = j.URL
	if !j.DestFound {
		return
	}
	if err := json.Unmarshal(headers, &j.Headers); err != nil {
		j.Unsendable = "destination headers are unreadable"
		return
	}
	if len(signingRaw) > 0 && string(signingRaw) != "null" {
		j.Signing = &signing.Config{}
		if err := json.Unmarshal(signingRaw, j.Signing); err != nil {
			j.Unsendable = "signing config is unreadable; the request was not sent unsigned"
			return
		}
	}
	sec, err := secrets.OpenDest(e.p.Secrets, j.DestinationID, sealed)
	if err != nil {
		e.p.Log.Error("destination secrets unreadable", "destination_id", j.DestinationID, "err", err)
		j.Unsendable = "destination secrets cannot be decrypted (encryption key missing or wrong); the request was not sent"
		return
	}
	if sec.URL != "" {
		j.SendURL = sec.URL
	}
	for k, v := range sec.Headers {
		j.Headers[k] = v
	}
	if j.Signing != nil {
		j.Signing.Secret = sec.SigningSecret
		if j.Signing.Secret == "" {
			j.Unsendable = "signing secret is missing; the request was not sent unsigned"
			return
		}
	}
	if prevValid {
		j.PrevSecret = sec.PreviousSecret
	}
}

// rooms is what each destination with requests in flight can still take
// (its request and lane bounds; others can take PerDestination), and the
// tenants that hold their share of the lanes (nothing of theirs is claimed).
func (e *Engine) rooms() (dests []string, rooms []int32, fullTenants []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for d, l := range e.inflight {
		dests, rooms = append(dests, d), append(rooms, int32(e.room(l)))
	}
	fullTenants = []string{}
	for t, n := range e.tenantLanes {
		if n >= e.p.PerTenantLanes {
			fullTenants = append(fullTenants, t)
		}
	}
	return dests, rooms, fullTenants
}

// tenantOf is a job's tenant key, as the claim compares it.
func tenantOf(j dispatchJob) string { return j.OrgID + "/" + j.EnvID }
