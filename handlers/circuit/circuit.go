// Package circuit is the destinations' circuit breaker: the
// destination_circuits rows and their transitions' events, the half-open
// probes, and the API's view and reset of a circuit.
package circuit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/internal/kit"
)

// ErrProbeInFlight refuses a manual retry while a half-open circuit's probe
// is being sent.
var ErrProbeInFlight = errors.New("the destination's circuit is half-open and its probe is in flight")

// Breakers answers the circuit endpoints.
type Breakers struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
	now   func() time.Time
	dests *resources.Registry
}

// New returns the circuit endpoints' service.
func New(pool *pgxpool.Pool, store *eventstore.Store, now func() time.Time, dests *resources.Registry) *Breakers {
	return &Breakers{pool: pool, store: store, now: func() time.Time { return now().UTC() }, dests: dests}
}

// Stream is the stream of a destination's circuit transitions.
func Stream(destinationID string) string { return "circuit_" + destinationID }

// AppendEvent records a transition; the circuit row lock (held by the
// caller) orders them, so the stream is appended at any version.
func AppendEvent(ctx context.Context, tx pgx.Tx, store *eventstore.Store, org, env, evType string, p domain.CircuitChanged, md eventstore.Metadata) error {
	_, err := store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamCircuit, StreamID: Stream(p.DestinationID),
		OrgID: org, EnvID: env, Expected: eventstore.AnyVersion, Events: []eventstore.NewEvent{{Type: evType, Payload: p, Metadata: md}}})
	return err
}

// Load locks and returns a destination's circuit (closed when it has no row yet).
func Load(ctx context.Context, tx pgx.Tx, destinationID string) (domain.Circuit, error) {
	c := domain.Circuit{State: domain.CircuitClosed}
	var probe *string
	err := tx.QueryRow(ctx, `SELECT state, failure_count, opened_at, last_transition_at, probe_delivery_id FROM destination_circuits
		WHERE destination_id = $1 FOR UPDATE`, destinationID).Scan(&c.State, &c.Failures, &c.OpenedAt, &c.LastTransition, &probe)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, nil
	}
	if probe != nil {
		c.Probe = *probe
	}
	return c, err
}

func Save(ctx context.Context, tx pgx.Tx, destinationID, org, env string, c domain.Circuit) error {
	_, err := tx.Exec(ctx, `INSERT INTO destination_circuits (destination_id, org_id, env_id, state, failure_count, opened_at, last_transition_at, probe_delivery_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''))
		ON CONFLICT (destination_id) DO UPDATE SET state = excluded.state, failure_count = excluded.failure_count, opened_at = excluded.opened_at,
			last_transition_at = excluded.last_transition_at, probe_delivery_id = excluded.probe_delivery_id`,
		destinationID, org, env, c.State, c.Failures, c.OpenedAt, c.LastTransition, c.Probe)
	return err
}

// CircuitStatus is GET /v1/destinations/{id}/circuit.
type CircuitStatus struct {
	DestinationID    string  `json:"destination_id"`
	Enabled          int     `json:"enabled"`
	State            string  `json:"state"`
	FailureCount     int     `json:"failure_count"`
	Threshold        int     `json:"threshold"`
	ResetMS          int     `json:"reset_ms"`
	OpenedAt         *string `json:"opened_at"`
	LastTransitionAt *string `json:"last_transition_at"`
	ProbeDeliveryID  *string `json:"probe_delivery_id"`
	QueuedDeliveries int     `json:"queued_deliveries"`
}

// GetCircuit returns a destination's circuit.
func (b *Breakers) GetCircuit(ctx context.Context, t domain.Tenant, destinationID string) (CircuitStatus, error) {
	d, err := b.dests.GetDestination(ctx, t, destinationID)
	if err != nil {
		return CircuitStatus{}, err
	}
	out := CircuitStatus{DestinationID: d.ID, Enabled: d.CircuitBreakerEnabled, State: domain.CircuitClosed,
		Threshold: d.CircuitBreakerThreshold, ResetMS: d.CircuitBreakerResetMS}
	var opened, last *time.Time
	err = b.pool.QueryRow(ctx, `SELECT state, failure_count, opened_at, last_transition_at, probe_delivery_id FROM destination_circuits WHERE destination_id = $1`,
		d.ID).Scan(&out.State, &out.FailureCount, &opened, &last, &out.ProbeDeliveryID)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return out, fmt.Errorf("get circuit: %w", err)
	}
	out.OpenedAt, out.LastTransitionAt = kit.ISOTimePtr(opened), kit.ISOTimePtr(last)
	if out.State != domain.CircuitClosed {
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM delivery_jobs WHERE destination_id = $1 AND state = 'scheduled'`, d.ID).Scan(&out.QueuedDeliveries); err != nil {
			return out, fmt.Errorf("get circuit: %w", err)
		}
	}
	return out, nil
}

// ResetCircuit closes a destination's circuit by hand; queued deliveries
// then drain in order.
func (b *Breakers) ResetCircuit(ctx context.Context, t domain.Tenant, destinationID, rid string) (CircuitStatus, error) {
	d, err := b.dests.GetDestination(ctx, t, destinationID)
	if err != nil {
		return CircuitStatus{}, err
	}
	err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		c, err := Load(ctx, tx, d.ID)
		if err != nil {
			return err
		}
		now := b.now()
		was := c.State
		c.State, c.Failures, c.OpenedAt, c.Probe = domain.CircuitClosed, 0, nil, ""
		if was != domain.CircuitClosed {
			c.LastTransition = &now
			if err := AppendEvent(ctx, tx, b.store, t.OrgID, t.EnvID, domain.EvCircuitClosed,
				domain.CircuitChanged{DestinationID: d.ID, Reason: "reset by " + t.Actor, At: now}, eventstore.Metadata{Actor: t.Actor, RequestID: rid}); err != nil {
				return err
			}
		}
		if err := Save(ctx, tx, d.ID, t.OrgID, t.EnvID, c); err != nil {
			return err
		}
		return jobs.Notify(ctx, tx)
	})
	if err != nil {
		return CircuitStatus{}, fmt.Errorf("reset circuit: %w", err)
	}
	return b.GetCircuit(ctx, t, d.ID)
}

// ProbeByManualRetry makes a manual retry the probe of an open or half-open
// circuit (in the retry's transaction): it goes out now instead of waiting
// for the cooldown.
func ProbeByManualRetry(ctx context.Context, tx pgx.Tx, store *eventstore.Store, t domain.Tenant, destinationID, deliveryID, rid string, now time.Time) error {
	c, err := Load(ctx, tx, destinationID)
	if err != nil || c.State == domain.CircuitClosed {
		return err
	}
	var inFlight bool
	if c.Probe != "" {
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM delivery_jobs WHERE delivery_id = $1 AND state = 'scheduled' AND lease_until >= $2)`,
			c.Probe, now).Scan(&inFlight); err != nil {
			return err
		}
	}
	if inFlight {
		return ErrProbeInFlight
	}
	c.State, c.Probe, c.LastTransition = domain.CircuitHalfOpen, deliveryID, &now
	if err := AppendEvent(ctx, tx, store, t.OrgID, t.EnvID, domain.EvCircuitHalfOpened,
		domain.CircuitChanged{DestinationID: destinationID, FailureCount: c.Failures, Reason: "manual retry", ProbeDelivery: deliveryID, At: now},
		eventstore.Metadata{Actor: t.Actor, RequestID: rid}); err != nil {
		return err
	}
	return Save(ctx, tx, destinationID, t.OrgID, t.EnvID, c)
}
