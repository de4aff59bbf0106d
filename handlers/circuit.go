package handlers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/kit"
)

// circuitStream is the stream of a destination's circuit transitions.
func circuitStream(destinationID string) string { return "circuit_" + destinationID }

// appendCircuitEvent records a transition; the circuit row lock (held by the
// caller) orders them, so the stream is appended at any version.
func appendCircuitEvent(ctx context.Context, tx pgx.Tx, store *eventstore.Store, org, env, evType string, p domain.CircuitChanged, md eventstore.Metadata) error {
	_, err := store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamCircuit, StreamID: circuitStream(p.DestinationID),
		OrgID: org, EnvID: env, Expected: eventstore.AnyVersion, Events: []eventstore.NewEvent{{Type: evType, Payload: p, Metadata: md}}})
	return err
}

// loadCircuit locks and returns a destination's circuit (closed when it has no row yet).
func loadCircuit(ctx context.Context, tx pgx.Tx, destinationID string) (domain.Circuit, error) {
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

func saveCircuit(ctx context.Context, tx pgx.Tx, destinationID, org, env string, c domain.Circuit) error {
	_, err := tx.Exec(ctx, `INSERT INTO destination_circuits (destination_id, org_id, env_id, state, failure_count, opened_at, last_transition_at, probe_delivery_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''))
		ON CONFLICT (destination_id) DO UPDATE SET state = excluded.state, failure_count = excluded.failure_count, opened_at = excluded.opened_at,
			last_transition_at = excluded.last_transition_at, probe_delivery_id = excluded.probe_delivery_id`,
		destinationID, org, env, c.State, c.Failures, c.OpenedAt, c.LastTransition, c.Probe)
	return err
}

// recordOutcomes runs inside the delivery handler's transaction after a
// batch of one destination was recorded: it moves the destination's
// circuit, opens or updates issues for dead letters and an opening circuit,
// and disables the destination on a 410 Gone.
func (e *Engine) recordOutcomes(ctx context.Context, tx pgx.Tx, batch []dispatchJob, results []domain.DeliveryAttempted, dlq map[string]bool, now time.Time) error {
	if len(batch) == 0 {
		return nil
	}
	dest, org, env := batch[0].DestinationID, batch[0].OrgID, batch[0].EnvID
	// One round trip for a healthy destination: its configuration and its
	// circuit (locked when it has a row), written back only when it changed.
	var cfg domain.CircuitConfig
	var resetMS int
	var destName string
	var probe *string
	c := domain.Circuit{}
	load := func(lock bool) error {
		q := `SELECT d.circuit_breaker_enabled, d.circuit_breaker_threshold, d.circuit_breaker_reset_ms, d.name,
				k.state, k.failure_count, k.opened_at, k.last_transition_at, k.probe_delivery_id
			FROM destinations d JOIN destination_circuits k ON k.destination_id = d.id
			WHERE d.id = $1`
		if lock {
			q += ` FOR UPDATE OF k`
		}
		return tx.QueryRow(ctx, q, dest).Scan(&cfg.Enabled, &cfg.Threshold, &resetMS, &destName,
			&c.State, &c.Failures, &c.OpenedAt, &c.LastTransition, &probe)
	}
	err := load(false)
	if errors.Is(err, pgx.ErrNoRows) {
		// Every destination gets its circuit row when it is written; create a missing one.
		tag, ierr := tx.Exec(ctx, `INSERT INTO destination_circuits (destination_id, org_id, env_id)
			SELECT id, org_id, env_id FROM destinations WHERE id = $1 ON CONFLICT (destination_id) DO NOTHING`, dest)
		if ierr != nil {
			return fmt.Errorf("create circuit: %w", ierr)
		}
		if tag.RowsAffected() == 0 {
			return nil // the destination was deleted
		}
		err = load(false)
	}
	// The circuit row is locked (serialising this destination's lanes) only
	// when the batch can move it: a closed, clean circuit that sees only
	// successes stays as it is, and a breaker that is off counts nothing.
	if err == nil && cfg.Enabled && (c.State != domain.CircuitClosed || c.Failures != 0 || probe != nil || anyRequestFailed(batch, results)) {
		err = load(true)
	}
	if err != nil {
		return fmt.Errorf("load circuit: %w", err)
	}
	cfg.Reset = time.Duration(resetMS) * time.Millisecond
	if probe != nil {
		c.Probe = *probe
	}
	before := c
	md := eventstore.Metadata{Actor: "engine"}
	disabled := batch[0].DestStatus == "disabled"
	for i, j := range batch {
		r := results[i]
		if !j.DestFound || (r.Final != "" && r.ResponseStatus == nil) {
			continue // not a request to the destination
		}
		md.CorrelationID = j.EventID
		transition := ""
		if cfg.Enabled {
			transition = c.Record(r.Status == domain.AttemptSuccess, cfg, now)
		}
		switch transition {
		case domain.EvCircuitOpened:
			reason := fmt.Sprintf("%d consecutive failures", c.Failures)
			if err := appendCircuitEvent(ctx, tx, e.p.Store, org, env, domain.EvCircuitOpened,
				domain.CircuitChanged{DestinationID: dest, FailureCount: c.Failures, Reason: reason, At: now}, md); err != nil {
				return err
			}
			if err := recordIssue(ctx, tx, e.p.Store, issueOccurrence{org: org, env: env, dest: dest, destName: destName, class: "circuit_open",
				deliveryID: j.DeliveryID, attemptID: r.AttemptID, eventID: j.EventID, errMsg: "circuit opened after " + reason, status: r.ResponseStatus}, now); err != nil {
				return err
			}
		case domain.EvCircuitClosed:
			if err := appendCircuitEvent(ctx, tx, e.p.Store, org, env, domain.EvCircuitClosed,
				domain.CircuitChanged{DestinationID: dest, Reason: "a delivery succeeded", At: now}, md); err != nil {
				return err
			}
		}
		if dlq[j.DeliveryID] {
			msg := ""
			if r.Error != nil {
				msg = *r.Error
			}
			if err := recordIssue(ctx, tx, e.p.Store, issueOccurrence{org: org, env: env, dest: dest, destName: destName, class: domain.ErrorClass(r),
				deliveryID: j.DeliveryID, attemptID: r.AttemptID, eventID: j.EventID, errMsg: msg, status: r.ResponseStatus}, now); err != nil {
				return err
			}
		}
		if r.ResponseStatus != nil && *r.ResponseStatus == 410 && !disabled {
			if err := e.disableDestination(ctx, tx, dest, org, env, "the destination answered 410 Gone", md); err != nil {
				return err
			}
			disabled = true
		}
	}
	if c.State == before.State && c.Failures == before.Failures && c.Probe == before.Probe {
		return nil
	}
	return saveCircuit(ctx, tx, dest, org, env, c)
}

// anyRequestFailed reports whether a request of the batch reached the
// destination and failed.
func anyRequestFailed(batch []dispatchJob, results []domain.DeliveryAttempted) bool {
	for i, j := range batch {
		r := results[i]
		if j.DestFound && !(r.Final != "" && r.ResponseStatus == nil) && r.Status != domain.AttemptSuccess {
			return true
		}
	}
	return false
}

// disableDestination sets a destination's status to disabled and records why.
func (e *Engine) disableDestination(ctx context.Context, tx pgx.Tx, dest, org, env, reason string, md eventstore.Metadata) error {
	tag, err := tx.Exec(ctx, `UPDATE destinations SET status = 'disabled', disabled_reason = $2, updated_at = $3 WHERE id = $1 AND status <> 'disabled'`,
		dest, reason, e.p.Now().UTC())
	if err != nil || tag.RowsAffected() == 0 {
		return err
	}
	_, err = e.p.Store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamDestination, StreamID: dest, OrgID: org, EnvID: env,
		Expected: eventstore.AnyVersion, Events: []eventstore.NewEvent{{Type: domain.EvDestinationDisabled, Payload: domain.DestinationDisabled{ID: dest, Reason: reason}, Metadata: md}}})
	return err
}

// circuitProbes moves open circuits whose cooldown has passed to half-open
// and picks each half-open circuit's one probe (the oldest due delivery,
// or the delivery a manual retry named). It returns the probes to claim.
func (e *Engine) circuitProbes(ctx context.Context) ([]string, error) {
	now := e.p.Now().UTC()
	var probes []string
	var any bool
	if err := e.p.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM destination_circuits WHERE state <> 'closed')`).Scan(&any); err != nil || !any {
		return nil, err
	}
	err := pgx.BeginFunc(ctx, e.p.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE destination_circuits k SET state = 'half_open', last_transition_at = $1, probe_delivery_id = NULL
			FROM destinations d
			WHERE d.id = k.destination_id AND k.state = 'open' AND k.opened_at + d.circuit_breaker_reset_ms * interval '1 millisecond' <= $1
			RETURNING k.destination_id, k.org_id, k.env_id, k.failure_count`, now)
		type opened struct {
			dest, org, env string
			failures       int
		}
		half, err := kit.CollectRows(rows, err, func(r pgx.Row) (opened, error) {
			var o opened
			return o, r.Scan(&o.dest, &o.org, &o.env, &o.failures)
		})
		if err != nil {
			return fmt.Errorf("half-open circuits: %w", err)
		}
		for _, o := range half {
			if err := appendCircuitEvent(ctx, tx, e.p.Store, o.org, o.env, domain.EvCircuitHalfOpened,
				domain.CircuitChanged{DestinationID: o.dest, FailureCount: o.failures, Reason: "cooldown elapsed", At: now}, eventstore.Metadata{Actor: "engine"}); err != nil {
				return err
			}
		}
		rows, err = tx.Query(ctx, `WITH p AS (
				SELECT DISTINCT ON (k.destination_id) k.destination_id, j.delivery_id
				FROM destination_circuits k JOIN delivery_jobs j ON j.destination_id = k.destination_id
				WHERE k.state = 'half_open' AND j.state = 'scheduled' AND j.due_at <= $1 AND (j.lease_until IS NULL OR j.lease_until < $1)
				  AND (k.probe_delivery_id IS NULL OR k.probe_delivery_id = j.delivery_id
				       OR NOT EXISTS (SELECT 1 FROM delivery_jobs pj WHERE pj.delivery_id = k.probe_delivery_id AND pj.state = 'scheduled'))
				  AND NOT EXISTS (SELECT 1 FROM delivery_jobs pj WHERE pj.delivery_id = k.probe_delivery_id AND pj.lease_until >= $1)
				  AND NOT EXISTS (SELECT 1 FROM destinations d WHERE d.id = j.destination_id AND d.status = 'paused')
				  AND NOT EXISTS (SELECT 1 FROM connections cn WHERE cn.id = j.connection_id AND cn.status = 'paused')
				ORDER BY k.destination_id, (j.delivery_id = k.probe_delivery_id) DESC, j.due_at
			)
			UPDATE destination_circuits k SET probe_delivery_id = p.delivery_id FROM p WHERE k.destination_id = p.destination_id
			RETURNING p.delivery_id`, now)
		probes, err = kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
			var id string
			return id, r.Scan(&id)
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("circuit probes: %w", err)
	}
	return probes, nil
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
func (s *Service) GetCircuit(ctx context.Context, t domain.Tenant, destinationID string) (CircuitStatus, error) {
	d, _, err := s.getDestination(ctx, t, destinationID)
	if err != nil {
		return CircuitStatus{}, err
	}
	out := CircuitStatus{DestinationID: d.ID, Enabled: d.CircuitBreakerEnabled, State: domain.CircuitClosed,
		Threshold: d.CircuitBreakerThreshold, ResetMS: d.CircuitBreakerResetMS}
	var opened, last *time.Time
	err = s.pool.QueryRow(ctx, `SELECT state, failure_count, opened_at, last_transition_at, probe_delivery_id FROM destination_circuits WHERE destination_id = $1`,
		d.ID).Scan(&out.State, &out.FailureCount, &opened, &last, &out.ProbeDeliveryID)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return out, fmt.Errorf("get circuit: %w", err)
	}
	out.OpenedAt, out.LastTransitionAt = kit.ISOTimePtr(opened), kit.ISOTimePtr(last)
	if out.State != domain.CircuitClosed {
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM delivery_jobs WHERE destination_id = $1 AND state = 'scheduled'`, d.ID).Scan(&out.QueuedDeliveries); err != nil {
			return out, fmt.Errorf("get circuit: %w", err)
		}
	}
	return out, nil
}

// ResetCircuit closes a destination's circuit by hand; queued deliveries
// then drain in order.
func (s *Service) ResetCircuit(ctx context.Context, t domain.Tenant, destinationID, rid string) (CircuitStatus, error) {
	d, _, err := s.getDestination(ctx, t, destinationID)
	if err != nil {
		return CircuitStatus{}, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		c, err := loadCircuit(ctx, tx, d.ID)
		if err != nil {
			return err
		}
		now := s.now()
		was := c.State
		c.State, c.Failures, c.OpenedAt, c.Probe = domain.CircuitClosed, 0, nil, ""
		if was != domain.CircuitClosed {
			c.LastTransition = &now
			if err := appendCircuitEvent(ctx, tx, s.store, t.OrgID, t.EnvID, domain.EvCircuitClosed,
				domain.CircuitChanged{DestinationID: d.ID, Reason: "reset by " + t.Actor, At: now}, eventstore.Metadata{Actor: t.Actor, RequestID: rid}); err != nil {
				return err
			}
		}
		if err := saveCircuit(ctx, tx, d.ID, t.OrgID, t.EnvID, c); err != nil {
			return err
		}
		err = jobs.Notify(ctx, tx)
		return err
	})
	if err != nil {
		return CircuitStatus{}, fmt.Errorf("reset circuit: %w", err)
	}
	return s.GetCircuit(ctx, t, d.ID)
}

// probeByManualRetry makes a manual retry the probe of an open or half-open
// circuit (in the retry's transaction): it goes out now instead of waiting
// for the cooldown.
func probeByManualRetry(ctx context.Context, tx pgx.Tx, store *eventstore.Store, t domain.Tenant, destinationID, deliveryID, rid string, now time.Time) error {
	c, err := loadCircuit(ctx, tx, destinationID)
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
		return retryFailed("the destination's circuit is half-open and its probe is in flight")
	}
	c.State, c.Probe, c.LastTransition = domain.CircuitHalfOpen, deliveryID, &now
	if err := appendCircuitEvent(ctx, tx, store, t.OrgID, t.EnvID, domain.EvCircuitHalfOpened,
		domain.CircuitChanged{DestinationID: destinationID, FailureCount: c.Failures, Reason: "manual retry", ProbeDelivery: deliveryID, At: now},
		eventstore.Metadata{Actor: t.Actor, RequestID: rid}); err != nil {
		return err
	}
	return saveCircuit(ctx, tx, destinationID, t.OrgID, t.EnvID, c)
}
