package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
)

// complete records a batch's outcomes in one transaction: load the streams,
// decide, append every stream at its expected version, move the jobs. When a
// stream moved meanwhile, each delivery is recorded on its own.
//
// With chain set, a delivery whose next attempt is due at once (a retry
// policy with no wait) keeps its job's lease, and its next attempt is
// returned for the caller to send straight away: no claim re-reads a job
// this worker just held. Only batches recorded in one go chain.
func (e *Engine) complete(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted, chain bool, run *laneRun) ([]dispatchJob, error) {
	next, err := e.completeTx(ctx, batch, results, chain, run)
	if !errors.Is(err, eventstore.ErrConcurrency) {
		return next, err
	}
	// One job alone too: its snapshot is what went stale.
	for i := range batch {
		batch[i].State = nil // a stream moved past a snapshot: load it
		for try := 0; ; try++ {
			_, err := e.completeTx(ctx, batch[i:i+1], results[i:i+1], false, nil)
			if err == nil || !errors.Is(err, eventstore.ErrConcurrency) || try == 3 {
				if err != nil {
					return nil, err
				}
				break
			}
		}
	}
	return nil, nil
}

// completeTx records a batch's outcomes. The common batch — no dead letter,
// no 410, a circuit the batch cannot move — takes one round trip: the
// outcome is decided from the jobs' snapshots (the streams of jobs without
// one are read first), and BEGIN, a guard on the circuit, the append, the
// job rows and COMMIT go in one pipeline. A stream that moved meanwhile
// fails the append, and a circuit the batch may move (breaker on and an
// attempt failed, a circuit not clean, none yet) fails the guard: nothing
// commits, and the batch is recorded again or on the locked path. Any
// other batch takes completeLocked, which locks what it changes (and never
// chains: a circuit, a dead letter or a 410 is involved).
//
// The pipeline commits without waiting for its WAL flush. A PostgreSQL
// crash within the flush delay (at most three wal_writer_delay, 600 ms by
// default; the next durable commit, such as an ingest, flushes it sooner)
// loses the record of attempts that were made, together with the job rows
// they moved: those jobs are still leased at their previous attempt, and
// once the lease runs out that attempt is sent again, with the same
// attempt id and Idempotency-Key. That is the duplicate an engine crash
// between a request and its record already gives, and at-least-once
// allows it; no attempt is lost and no delivery is skipped. A commit per
// recorded batch waiting for its flush was, at 150 webhooks/s, one WAL
// flush per webhook on top of the ingest's.
//
// With run set (a lane's batch), the pipeline is shared with the batches
// other lanes record at about the same time (recordGrouped).
func (e *Engine) completeTx(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted, chain bool, run *laneRun) ([]dispatchJob, error) {
	if !batch[0].DestFound || anyGone(results) {
		return nil, e.completeLocked(ctx, batch, results)
	}
	failed := anyRequestFailed(batch, results)
	if batch[0].BreakerOn && failed {
		return nil, e.completeLocked(ctx, batch, results) // the circuit counts the failure
	}
	streams, err := e.loadUnsnapshotted(ctx, batch)
	if err != nil {
		return nil, fmt.Errorf("read streams: %w", err)
	}
	now := e.p.Now().UTC()
	var holdUntil *time.Time
	if chain && (run == nil || !run.released()) { // a batch that gave its room back chains nothing
		until := now.Add(e.p.LeaseTTL)
		holdUntil = &until
	}
	plan, err := planCompletion(batch, results, streams, now, holdUntil)
	if err != nil {
		return nil, err
	}
	if plan.deadLetter {
		return nil, e.completeLocked(ctx, batch, results) // a dead letter opens an issue
	}
	p := &pendingRecord{dest: batch[0].DestinationID, failed: failed, plan: plan, jobs: len(batch)}
	var kept map[string]bool
	// A small batch records in a group, its retries too: it gives the
	// destination's room back while the record waits (a wait holding it
	// kept the destination busy, so the next webhooks were claimed, not
	// handed off) and takes it again for the retries the record kept
	// (retake). A full batch that chains records at once, alone, holding
	// its room: under load a group would not wait for it anyway, and
	// another lane would take the room meanwhile. A manual retry records at
	// once: its API call waits for the outcome.
	grouped := run != nil && !anyManual(batch) && (len(plan.next) == 0 || len(batch) < groupJobs)
	if grouped {
		run.sent(e) // the destination's room is free while the record waits
		kept, err = e.recordGrouped(ctx, p)
	}
	if !grouped || errors.Is(err, errRecordAlone) {
		kept, err = e.record(ctx, []*pendingRecord{p})
	}
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == jobs.CircuitGuardCode {
		return nil, e.completeLocked(ctx, batch, results)
	}
	if err != nil {
		return nil, err
	}
	next := plan.next[:0]
	for _, j := range plan.next {
		if kept[j.DeliveryID] { // else paused meanwhile: the job waits like any other
			next = append(next, j)
		}
	}
	if len(next) > 0 && run != nil && run.released() && (e.draining.Load() || !e.retake(run, len(next))) {
		// The engine began to drain, or other batches took the
		// destination's room while the record waited: the retries give
		// their leases back and are claimed, in due order, when there is
		// room (recorded pokes the dispatcher).
		if err := e.releaseLeased(ctx, next); err != nil {
			e.p.Log.Warn("hand back chained retries; their leases expire instead", "err", err, "deliveries", len(next))
		}
		return nil, nil
	}
	return next, nil
}

// record writes the planned records of one or more batches in one
// pipelined transaction: BEGIN, the circuit guard of their destinations,
// the append, the job rows, the release of stale jobs, COMMIT. It returns
// the deliveries whose jobs kept their leases.
func (e *Engine) record(ctx context.Context, group []*pendingRecord) (map[string]bool, error) {
	var dests []string
	var failed []bool
	var appends []eventstore.StreamAppend
	var rows jobs.Rows
	var stale []string
	for _, p := range group {
		dests, failed = append(dests, p.dest), append(failed, p.failed)
		appends = append(appends, p.plan.appends...)
		rows.Merge(p.plan.rows)
		stale = append(stale, p.plan.stale...)
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(jobs.CircuitGuardSQL, dests, failed)
	var read func(pgx.BatchResults) ([]eventstore.Event, error)
	if len(appends) > 0 {
		var err error
		if read, err = e.p.Store.QueueAppend(b, appends...); err != nil {
			return nil, err
		}
		b.Queue(jobs.UpdateSQL, rows.Args(e.p.WorkerID)...)
	}
	if len(stale) > 0 {
		b.Queue(jobs.ReleaseSQL, stale, e.p.WorkerID)
	}
	var kept map[string]bool
	err := kit.SendTx(ctx, e.p.Pool, false, b, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if read != nil {
			if _, err := read(br); err != nil {
				return err
			}
			var err error
			if kept, err = keptLeases(br); err != nil {
				return fmt.Errorf("update jobs: %w", err)
			}
		}
		if len(stale) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("release stale jobs: %w", err)
			}
		}
		return nil
	})
	return kept, err
}

// keptLeases reads UpdateSQL's result: the deliveries whose jobs kept their leases.
func keptLeases(br pgx.BatchResults) (map[string]bool, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	kept := map[string]bool{}
	var id string
	var held bool
	_, err = pgx.ForEachRow(rows, []any{&id, &held}, func() error {
		if held {
			kept[id] = true
		}
		return nil
	})
	return kept, err
}

// loadUnsnapshotted loads the streams of the batch's deliveries whose job
// rows carry no snapshot (written by the scheduler or a rebuild); none for
// the rest.
func (e *Engine) loadUnsnapshotted(ctx context.Context, batch []dispatchJob) (map[string][]eventstore.Event, error) {
	var ids []string
	for _, j := range batch {
		if j.State == nil {
			ids = append(ids, j.DeliveryID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return e.p.Store.LoadMany(ctx, e.p.Pool, ids)
}

// completionPlan is what recording a batch writes, and the attempts it chains.
type completionPlan struct {
	appends []eventstore.StreamAppend // at their expected versions
	rows    jobs.Rows                 // the job rows they give
	stale   []string                  // deliveries whose attempt was recorded before
	// deadLetter: one goes to the dead letter queue (then nothing is
	// planned: that batch takes completeLocked)
	deadLetter bool
	// next are the attempts due at once whose jobs keep their leases (only
	// with holdUntil set): the caller sends them itself.
	next []dispatchJob
}

// planCompletion folds each delivery with its attempt's result.
func planCompletion(batch []dispatchJob, results []domain.DeliveryAttempted, streams map[string][]eventstore.Event,
	now time.Time, holdUntil *time.Time) (plan completionPlan, err error) {
	appends, rows, stale := &plan.appends, &plan.rows, &plan.stale
	for i, j := range batch {
		var d *domain.Delivery
		var decided []domain.Decided
		var err error
		if j.State != nil {
			d = domain.RestoreDelivery(*j.State)
			decided, err = d.RecordAttempt(results[i], j.Retry, now, kit.NewID)
		} else {
			d, decided, err = recordAttempt(streams[j.DeliveryID], j, results[i], now)
		}
		if errors.Is(err, domain.ErrAttemptNotPlanned) {
			*stale = append(*stale, j.DeliveryID)
			continue
		}
		if err != nil {
			return completionPlan{}, err
		}
		md := eventstore.Metadata{Actor: "engine", CorrelationID: j.EventID}
		expected := d.Version()
		evs := make([]eventstore.NewEvent, len(decided))
		for k, dec := range decided {
			if dec.Type == domain.EvMovedToDLQ {
				return completionPlan{deadLetter: true}, nil
			}
			// The events' versions are known: the fold follows them without a read back.
			if err := d.ApplyDecided(expected+int64(k)+1, dec); err != nil {
				return completionPlan{}, err
			}
			// The store encodes the payload (once: a json.RawMessage would be
			// encoded here and scanned again there).
			evs[k] = eventstore.NewEvent{Type: dec.Type, Payload: dec.Payload, Projected: dec.Payload, Metadata: md}
		}
		*appends = append(*appends, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: j.DeliveryID,
			OrgID: j.OrgID, EnvID: j.EnvID, Expected: expected, Events: evs})
		if next, ok := chained(j, d, now, holdUntil); ok {
			rows.AddHeld(j.DeliveryID, d, now, *holdUntil, j.DestUpdatedAt)
			plan.next = append(plan.next, next)
		} else {
			rows.Add(j.DeliveryID, d, now)
		}
	}
	return plan, nil
}

// chainWindow bounds how long after its claim a job's attempts chain: past
// it the next attempt is claimed again, re-reading the destination (a
// previous signing secret's expiry, say, is checked at the claim).
const chainWindow = 30 * time.Second

// chained is the job of a delivery's next attempt when it is due now and
// the worker may send it at once (holdUntil set): the same destination,
// body and credentials as the attempt just made, the next attempt's id and
// number, and the folded state to record it without a stream load.
func chained(j dispatchJob, d *domain.Delivery, now time.Time, holdUntil *time.Time) (dispatchJob, bool) {
	n := d.Next()
	if holdUntil == nil || n == nil || n.Due.After(now) || now.Sub(j.ClaimedAt) > chainWindow {
		return dispatchJob{}, false
	}
	st, ok := d.State()
	if !ok {
		return dispatchJob{}, false
	}
	j.AttemptID, j.AttemptNumber, j.Version, j.State, j.Manual = n.ID, n.Number, d.Version(), &st, n.Trigger == domain.TriggerManual
	return j, true
}

// recordAttempt folds a delivery's stream and decides what its attempt's
// result appends (domain.ErrAttemptNotPlanned: the attempt was recorded before).
func recordAttempt(stream []eventstore.Event, j dispatchJob, r domain.DeliveryAttempted, now time.Time) (*domain.Delivery, []domain.Decided, error) {
	d, err := kit.FoldDelivery(stream)
	if err != nil {
		return nil, nil, err
	}
	decided, err := d.RecordAttempt(r, j.Retry, now, kit.NewID)
	return d, decided, err
}

// completeLocked records a batch in one transaction that locks the circuit
// when it changes, opens issues for dead letters and disables a destination
// that answered 410.
func (e *Engine) completeLocked(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted) error {
	return pgx.BeginFunc(ctx, e.p.Pool, func(tx pgx.Tx) error {
		ids := make([]string, len(batch))
		for i, j := range batch {
			ids[i] = j.DeliveryID
		}
		streams, err := e.p.Store.LoadMany(ctx, tx, ids)
		if err != nil {
			return err
		}
		now := e.p.Now().UTC()
		var appends []eventstore.StreamAppend
		aggs := map[string]*domain.Delivery{}
		var stale []string
		var recordedJobs []dispatchJob
		var recordedResults []domain.DeliveryAttempted
		dlq := map[string]bool{}
		for i, j := range batch {
			d, decided, err := recordAttempt(streams[j.DeliveryID], j, results[i], now)
			if errors.Is(err, domain.ErrAttemptNotPlanned) {
				stale = append(stale, j.DeliveryID)
				continue
			}
			if err != nil {
				return err
			}
			recordedJobs, recordedResults = append(recordedJobs, j), append(recordedResults, results[i])
			for _, dec := range decided {
				if dec.Type == domain.EvMovedToDLQ {
					dlq[j.DeliveryID] = true
				}
			}
			aggs[j.DeliveryID] = d
			appends = append(appends, eventstore.StreamAppend{
				StreamType: domain.StreamDelivery, StreamID: j.DeliveryID, OrgID: j.OrgID, EnvID: j.EnvID, Expected: d.Version(),
				Events: kit.NewEvents(decided, eventstore.Metadata{Actor: "engine", CorrelationID: j.EventID}),
			})
		}
		if len(appends) > 0 {
			stored, err := e.p.Store.AppendMany(ctx, tx, appends...)
			if err != nil {
				return err
			}
			for _, ev := range stored {
				if err := aggs[ev.StreamID].Apply(ev.StreamVersion, ev.Type, ev.Payload); err != nil {
					return err
				}
			}
		}
		if err := e.moveJobs(ctx, tx, aggs, stale, now); err != nil {
			return err
		}
		return e.recordOutcomes(ctx, tx, recordedJobs, recordedResults, dlq, now)
	})
}

// moveJobs moves the job rows of the folded deliveries on and hands back
// the stale ones (their attempt was recorded before).
func (e *Engine) moveJobs(ctx context.Context, tx pgx.Tx, aggs map[string]*domain.Delivery, stale []string, now time.Time) error {
	var rows jobs.Rows
	for id, d := range aggs {
		rows.Add(id, d, now)
	}
	if rows.Len() > 0 {
		if _, err := tx.Exec(ctx, jobs.UpdateSQL, rows.Args(e.p.WorkerID)...); err != nil {
			return fmt.Errorf("update jobs: %w", err)
		}
	}
	if len(stale) > 0 {
		if _, err := tx.Exec(ctx, jobs.ReleaseSQL, stale, e.p.WorkerID); err != nil {
			return fmt.Errorf("release stale jobs: %w", err)
		}
	}
	return nil
}

// HotStatements are the statements the delivery handler runs on every
// batch: preparing them on fresh connections before traffic keeps their
// planning off the first deliveries.
func HotStatements() []string {
	return []string{jobs.ClaimSQL, jobs.UpdateSQL, jobs.ReleaseSQL, jobs.CircuitGuardSQL, eventstore.AppendKnownSQL, eventstore.AppendSQL}
}

// anyManual reports whether the batch holds a manual retry: its API call
// waits for the outcome.
func anyManual(batch []dispatchJob) bool {
	for _, j := range batch {
		if j.Manual {
			return true
		}
	}
	return false
}
