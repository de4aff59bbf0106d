// Package redeliver sends deliveries again: the manual retry of an attempt
// (the seed endpoint), the retry of an event's or an issue's failed
// deliveries, and replays of a time range at a set rate.
package redeliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/circuit"
	"github.com/hookstream/hookstream/handlers/issues"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/wake"
	"github.com/hookstream/hookstream/projections"
)

// Params configure redelivery.
type Params struct {
	Pool  *pgxpool.Pool
	Store *eventstore.Store
	Log   *slog.Logger
	Now   func() time.Time
	// ReplayPoll is how often RunReplays checks running replays for a due batch (default 250ms).
	ReplayPoll time.Duration
	Reads      *projections.Reads
	Registry   *resources.Registry
	Issues     *issues.Tracker
	// Wake, shared with the engine, tells waiting retries of this process
	// that attempts were projected without a round trip (optional).
	Wake *wake.Notifier
}

// Redeliverer retries and replays deliveries.
type Redeliverer struct {
	p      Params
	pool   *pgxpool.Pool
	store  *eventstore.Store
	now    func() time.Time
	reads  *projections.Reads
	reg    *resources.Registry
	issues *issues.Tracker
	// projected wakes retries waiting for their attempt's outcome.
	projected *projected
}

// New fills defaults and returns the redeliverer.
func New(p Params) *Redeliverer {
	kit.Defaults(&p.Now, &p.Log, &p.Store)
	if p.ReplayPoll <= 0 {
		p.ReplayPoll = 250 * time.Millisecond
	}
	r := &Redeliverer{p: p, pool: p.Pool, store: p.Store, now: func() time.Time { return p.Now().UTC() },
		reads: p.Reads, reg: p.Registry, issues: p.Issues, projected: &projected{pool: p.Pool, wake: p.Wake}}
	if p.Wake != nil {
		p.Wake.OnLocal(projections.ProjectedChannel, r.projected.signal)
	}
	return r
}

func retryFailed(reason string) error {
	return domain.Errorf(domain.EInvalid, "Retry failed: %s", reason)
}

// RetryAttempt retries the delivery an attempt belongs to: RetryRequested at
// the stream's expected version and the job due now, in one transaction. With
// wait it returns the new attempt's outcome (up to the destination timeout),
// else the pending attempt. Refusals are EInvalid "Retry failed: <reason>".
func (s *Redeliverer) RetryAttempt(ctx context.Context, t domain.Tenant, attemptID string, wait bool, rid string) (projections.Attempt, error) {
	orig, err := s.reads.GetAttempt(ctx, t, attemptID)
	if err != nil {
		return projections.Attempt{}, err
	}
	var deliveryID string
	if err := s.pool.QueryRow(ctx, `SELECT delivery_id FROM delivery_attempts WHERE id = $1`, orig.ID).Scan(&deliveryID); err != nil {
		return projections.Attempt{}, fmt.Errorf("retry: find delivery: %w", err)
	}
	return s.retryDelivery(ctx, t, deliveryID, orig, wait, rid)
}

// retryDelivery records a manual retry of a delivery (orig is the attempt
// retried) and returns the new attempt, pending or, with wait, its outcome.
func (s *Redeliverer) retryDelivery(ctx context.Context, t domain.Tenant, deliveryID string, orig projections.Attempt, wait bool, rid string) (projections.Attempt, error) {
	newAttempt := kit.NewID()
	var err error
	var timeout time.Duration
	for try := 0; ; try++ {
		timeout, err = s.requestRetry(ctx, t, deliveryID, orig, newAttempt, rid)
		if errors.Is(err, eventstore.ErrConcurrency) && try < 3 {
			continue // someone appended first: decide again on the new state
		}
		break
	}
	if errors.Is(err, eventstore.ErrConcurrency) {
		return projections.Attempt{}, retryFailed("the delivery changed concurrently; try again")
	}
	if err != nil {
		return projections.Attempt{}, err
	}
	return s.awaitAttempt(ctx, t, newAttempt, wait, timeout)
}

// awaitAttempt returns an attempt once projected (within 5 s), or with wait
// once it has an outcome (within the destination's timeout more); an
// attempt still pending at the deadline is returned as it is.
func (s *Redeliverer) awaitAttempt(ctx context.Context, t domain.Tenant, attemptID string, wait bool, timeout time.Duration) (projections.Attempt, error) {
	deadline := s.now().Add(5 * time.Second)
	if wait {
		deadline = deadline.Add(timeout)
	}
	poll := 50 * time.Millisecond
	for {
		woken := s.projected.next() // before the read: a projection after it wakes us
		a, err := s.reads.GetAttempt(ctx, t, attemptID)
		if err == nil && (!wait || a.Status != domain.AttemptPending) {
			return a, nil
		}
		if err != nil && domain.ErrorCode(err) != domain.ENotFound {
			return projections.Attempt{}, err
		}
		if s.now().After(deadline) {
			if err == nil {
				return a, nil // still pending: the outcome will show in the list
			}
			return projections.Attempt{}, fmt.Errorf("attempt %s not projected in time", attemptID)
		}
		// Woken when the projector commits attempts (LISTEN/NOTIFY), with a
		// slow poll in case the listener is reconnecting.
		select {
		case <-ctx.Done():
			return projections.Attempt{}, ctx.Err()
		case <-woken:
		case <-time.After(poll):
			poll = min(2*poll, retryPollMax)
		}
	}
}

// Stop ends the listener waiting retries share.
func (s *Redeliverer) Stop() { s.projected.Stop() }

func (s *Redeliverer) requestRetry(ctx context.Context, t domain.Tenant, deliveryID string, orig projections.Attempt, newAttempt, rid string) (time.Duration, error) {
	var timeout time.Duration
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		now := s.now()
		url, method, timeoutMS, err := retryable(ctx, tx, deliveryID, orig, now)
		if err != nil {
			return err
		}
		timeout = time.Duration(timeoutMS) * time.Millisecond
		evs, err := s.store.Load(ctx, tx, deliveryID)
		if err != nil {
			return err
		}
		d, err := kit.FoldDelivery(evs)
		if err != nil {
			return err
		}
		decided, err := d.RequestRetry(orig.ID, newAttempt, url, method, now)
		if err != nil {
			return err
		}
		stored, err := s.store.Append(ctx, tx, eventstore.StreamAppend{
			StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: t.OrgID, EnvID: t.EnvID, Expected: d.Version(),
			Events: kit.NewEvents(decided, eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: orig.EventID, CausationID: orig.ID}),
		})
		if err != nil {
			return err
		}
		for _, e := range stored {
			if err := d.Apply(e.StreamVersion, e.Type, e.Payload); err != nil {
				return err
			}
		}
		if err := jobs.Upsert(ctx, tx, d, t.OrgID, t.EnvID); err != nil {
			return err
		}
		// A manual retry while the destination's circuit is open is its probe.
		err = circuit.ProbeByManualRetry(ctx, tx, s.store, t, orig.DestinationID, deliveryID, rid, now)
		if errors.Is(err, circuit.ErrProbeInFlight) {
			return retryFailed(err.Error())
		}
		return err
	})
	return timeout, err
}

// retryable locks the delivery's job and checks that it may be retried now:
// scheduled, not in flight, its destination and connection active. It
// returns where the retry goes.
func retryable(ctx context.Context, tx pgx.Tx, deliveryID string, orig projections.Attempt, now time.Time) (url, method string, timeoutMS int, err error) {
	state, leaseUntil, err := jobs.Lock(ctx, tx, deliveryID)
	if errors.Is(err, pgx.ErrNoRows) {
		// A finished delivery's row was pruned (its job is written with its
		// DeliveryRequested, so a delivery always had one): the retry writes
		// it again, and the stream's expected version orders concurrent ones.
		state, err = "done", nil
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("lock job: %w", err)
	}
	if state == "scheduled" && leaseUntil != nil && leaseUntil.After(now) {
		return "", "", 0, retryFailed("an attempt of this delivery is in flight")
	}
	// A webhook whose payload expired cannot be sent again. (The job row is
	// locked: retention keeps the payloads of scheduled deliveries, and this
	// retry schedules it in the same transaction.)
	// The row is read FOR SHARE: a history pass (which locks it FOR UPDATE
	// before it looks for job rows) either sees this retry's job or removed
	// the webhook before it, and then the retry finds no row.
	var expired bool
	err = tx.QueryRow(ctx, `SELECT payload ? 'payload_expired_at' FROM events WHERE stream_id = $1 AND stream_version = 1 FOR SHARE`,
		orig.EventID).Scan(&expired)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", 0, retryFailed("the webhook's history expired (the environment's history retention); it cannot be sent again")
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("check payload: %w", err)
	}
	if expired {
		return "", "", 0, retryFailed("the webhook's payload expired (the environment's retention); it cannot be sent again")
	}
	var destStatus string
	err = tx.QueryRow(ctx, `SELECT status, url, method, timeout_ms FROM destinations WHERE id = $1`, orig.DestinationID).Scan(&destStatus, &url, &method, &timeoutMS)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", 0, retryFailed("the destination was deleted")
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("load destination: %w", err)
	}
	if destStatus != "active" {
		return "", "", 0, retryFailed("the destination is " + destStatus)
	}
	if orig.ConnectionID == "" { // a replay made without a connection has none
		return url, method, timeoutMS, nil
	}
	var connEnabled bool
	var connStatus string
	err = tx.QueryRow(ctx, `SELECT enabled, status FROM connections WHERE id = $1`, orig.ConnectionID).Scan(&connEnabled, &connStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", 0, retryFailed("the connection was deleted")
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("load connection: %w", err)
	}
	if !connEnabled || connStatus != "active" {
		return "", "", 0, retryFailed("the connection is disabled")
	}
	return url, method, timeoutMS, nil
}
