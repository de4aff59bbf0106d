package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
)

// complete records a batch's outcomes in one transaction: load the streams,
// decide, append every stream at its expected version, move the jobs. When a
// stream moved meanwhile, each delivery is recorded on its own.
func (e *Engine) complete(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted) error {
	err := e.completeTx(ctx, batch, results)
	if !errors.Is(err, eventstore.ErrConcurrency) || len(batch) == 1 {
		return err
	}
	for i := range batch {
		batch[i].State = nil // a stream moved past a snapshot: load it
		for try := 0; ; try++ {
			err := e.completeTx(ctx, batch[i:i+1], results[i:i+1])
			if err == nil || !errors.Is(err, eventstore.ErrConcurrency) || try == 3 {
				if err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}

// completeTx records a batch's outcomes. The common batch — no dead letter,
// no 410, a circuit the batch cannot move — takes two round trips: the
// delivery streams and the circuit are read, the outcome is decided from
// them, and BEGIN, the append, the job rows and COMMIT go in one pipeline
// (a stream that moved meanwhile fails the append and nothing commits). Any
// other batch takes completeLocked, which locks what it changes.
func (e *Engine) completeTx(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted) error {
	if !batch[0].DestFound || anyGone(results) {
		return e.completeLocked(ctx, batch, results)
	}
	streams, enabled, clean, err := e.readForCompletion(ctx, batch)
	if errors.Is(err, pgx.ErrNoRows) {
		return e.completeLocked(ctx, batch, results) // no circuit row: made there
	}
	if err != nil {
		return fmt.Errorf("read streams and circuit: %w", err)
	}
	if enabled && (!clean || anyRequestFailed(batch, results)) {
		return e.completeLocked(ctx, batch, results)
	}
	appends, rows, stale, deadLetter, err := planCompletion(batch, results, streams, e.p.Now().UTC())
	if err != nil {
		return err
	}
	if deadLetter {
		return e.completeLocked(ctx, batch, results) // a dead letter opens an issue
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	var read func(pgx.BatchResults) ([]eventstore.Event, error)
	if len(appends) > 0 {
		if read, err = e.p.Store.QueueAppend(b, appends...); err != nil {
			return err
		}
		b.Queue(jobs.UpdateSQL, rows.Args()...)
	}
	if len(stale) > 0 {
		b.Queue(jobs.ReleaseSQL, stale, e.p.WorkerID)
	}
	return kit.SendTx(ctx, e.p.Pool, b, func(br pgx.BatchResults) error {
		if read != nil {
			if _, err := read(br); err != nil {
				return err
			}
			if _, err := br.Exec(); err != nil {
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
}

// readForCompletion reads, in one round trip, the batch's delivery streams
// and whether its destination's circuit breaker is enabled and its circuit
// clean (closed, no failures, no probe). pgx.ErrNoRows: no circuit row yet.
func (e *Engine) readForCompletion(ctx context.Context, batch []dispatchJob) (streams map[string][]eventstore.Event, enabled, clean bool, err error) {
	var ids []string // the deliveries without a snapshot: their streams are loaded
	for _, j := range batch {
		if j.State == nil {
			ids = append(ids, j.DeliveryID)
		}
	}
	reads := &pgx.Batch{}
	readStreams := func(pgx.BatchResults) (map[string][]eventstore.Event, error) { return nil, nil }
	if len(ids) > 0 {
		readStreams = e.p.Store.QueueLoadMany(reads, ids)
	}
	reads.Queue(circuitCleanSQL, batch[0].DestinationID)
	br := e.p.Pool.SendBatch(ctx, reads)
	streams, err = readStreams(br)
	if err == nil {
		err = br.QueryRow().Scan(&enabled, &clean)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return streams, enabled, clean, err
}

// planCompletion folds each delivery with its attempt's result: the appends
// at their expected versions, the job rows they give, the deliveries whose
// attempt was recorded before (stale), and whether one goes to the dead
// letter queue (then nothing is planned: that batch takes completeLocked).
func planCompletion(batch []dispatchJob, results []domain.DeliveryAttempted, streams map[string][]eventstore.Event,
	now time.Time) (appends []eventstore.StreamAppend, rows jobs.Rows, stale []string, deadLetter bool, err error) {
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
			stale = append(stale, j.DeliveryID)
			continue
		}
		if err != nil {
			return nil, rows, nil, false, err
		}
		md := eventstore.Metadata{Actor: "engine", CorrelationID: j.EventID}
		expected := d.Version()
		evs := make([]eventstore.NewEvent, len(decided))
		for k, dec := range decided {
			if dec.Type == domain.EvMovedToDLQ {
				return nil, rows, nil, true, nil
			}
			raw, err := json.Marshal(dec.Payload)
			if err != nil {
				return nil, rows, nil, false, err
			}
			// The events' versions are known: the fold follows them without a read back.
			if err := d.ApplyDecided(expected+int64(k)+1, dec); err != nil {
				return nil, rows, nil, false, err
			}
			evs[k] = eventstore.NewEvent{Type: dec.Type, Payload: json.RawMessage(raw), Metadata: md}
		}
		appends = append(appends, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: j.DeliveryID,
			OrgID: j.OrgID, EnvID: j.EnvID, Expected: expected, Events: evs})
		rows.Add(j.DeliveryID, d, now)
	}
	return appends, rows, stale, false, nil
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
		if _, err := tx.Exec(ctx, jobs.UpdateSQL, rows.Args()...); err != nil {
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

// circuitCleanSQL reads whether a destination's breaker is on and its circuit clean.
const circuitCleanSQL = `SELECT d.circuit_breaker_enabled, k.state = 'closed' AND k.failure_count = 0 AND k.probe_delivery_id IS NULL
		FROM destinations d JOIN destination_circuits k ON k.destination_id = d.id WHERE d.id = $1`

// HotStatements are the statements the delivery handler runs on every
// batch: preparing them on fresh connections before traffic keeps their
// planning off the first deliveries.
func HotStatements() []string {
	return []string{jobs.ClaimSQL, jobs.UpdateSQL, jobs.ReleaseSQL, circuitCleanSQL, eventstore.AppendSQL}
}
