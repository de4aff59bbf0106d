package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/circuit"
	"github.com/hookstream/hookstream/handlers/issues"
)

// recordOutcomes runs inside the delivery handler's transaction after a
// batch of one destination was recorded: it moves the destination's
// circuit, opens or updates issues for dead letters and an opening circuit,
// and disables the destination on a 410 Gone.
func (e *Engine) recordOutcomes(ctx context.Context, tx pgx.Tx, batch []dispatchJob, results []domain.DeliveryAttempted, dlq map[string]bool, now time.Time) error {
	if len(batch) == 0 {
		return nil
	}
	dest, org, env := batch[0].DestinationID, batch[0].OrgID, batch[0].EnvID
	bc, err := loadBatchCircuit(ctx, tx, dest, func() bool { return anyRequestFailed(batch, results) })
	if err != nil || bc == nil {
		return err
	}
	before := bc.c
	md := eventstore.Metadata{Actor: "engine"}
	disabled := batch[0].DestStatus == "disabled"
	for i, j := range batch {
		r := results[i]
		if !j.DestFound || (r.Final != "" && r.ResponseStatus == nil) {
			continue // not a request to the destination
		}
		md.CorrelationID = j.EventID
		if err := e.recordOutcome(ctx, tx, bc, j, r, dlq[j.DeliveryID], md, now); err != nil {
			return err
		}
		if r.ResponseStatus != nil && *r.ResponseStatus == 410 && !disabled {
			if err := e.disableDestination(ctx, tx, dest, org, env, "the destination answered 410 Gone", md); err != nil {
				return err
			}
			disabled = true
		}
	}
	c := bc.c
	if c.State == before.State && c.Failures == before.Failures && c.Probe == before.Probe {
		return nil
	}
	return circuit.Save(ctx, tx, dest, org, env, c)
}

// batchCircuit is a destination's circuit as a batch's outcomes move it.
type batchCircuit struct {
	cfg      domain.CircuitConfig
	destName string
	c        domain.Circuit
}

// loadBatchCircuit reads a destination's configuration and circuit in one
// round trip (creating a missing circuit row); nil when the destination was
// deleted. The circuit row is locked (serialising this destination's lanes)
// only when the batch can move it: a closed, clean circuit that sees only
// successes (mayFail false) stays as it is, and a breaker that is off
// counts nothing.
func loadBatchCircuit(ctx context.Context, tx pgx.Tx, dest string, mayFail func() bool) (*batchCircuit, error) {
	bc := &batchCircuit{}
	var resetMS int
	var probe *string
	load := func(lock bool) error {
		q := `SELECT d.circuit_breaker_enabled, d.circuit_breaker_threshold, d.circuit_breaker_reset_ms, d.name,
				k.state, k.failure_count, k.opened_at, k.last_transition_at, k.probe_delivery_id
			FROM destinations d JOIN destination_circuits k ON k.destination_id = d.id
			WHERE d.id = $1`
		if lock {
			q += ` FOR UPDATE OF k`
		}
		return tx.QueryRow(ctx, q, dest).Scan(&bc.cfg.Enabled, &bc.cfg.Threshold, &resetMS, &bc.destName,
			&bc.c.State, &bc.c.Failures, &bc.c.OpenedAt, &bc.c.LastTransition, &probe)
	}
	err := load(false)
	if errors.Is(err, pgx.ErrNoRows) {
		// Every destination gets its circuit row when it is written; create a missing one.
		tag, ierr := tx.Exec(ctx, `INSERT INTO destination_circuits (destination_id, org_id, env_id)
			SELECT id, org_id, env_id FROM destinations WHERE id = $1 ON CONFLICT (destination_id) DO NOTHING`, dest)
		if ierr != nil {
			return nil, fmt.Errorf("create circuit: %w", ierr)
		}
		if tag.RowsAffected() == 0 {
			return nil, nil // the destination was deleted
		}
		err = load(false)
	}
	if err == nil && bc.cfg.Enabled && (bc.c.State != domain.CircuitClosed || bc.c.Failures != 0 || probe != nil || mayFail()) {
		err = load(true)
	}
	if err != nil {
		return nil, fmt.Errorf("load circuit: %w", err)
	}
	bc.cfg.Reset = time.Duration(resetMS) * time.Millisecond
	if probe != nil {
		bc.c.Probe = *probe
	}
	return bc, nil
}

// recordOutcome moves the circuit by one request's result, recording its
// transition (an opening also opens an issue), and opens or updates the
// issue of a dead letter.
func (e *Engine) recordOutcome(ctx context.Context, tx pgx.Tx, bc *batchCircuit, j dispatchJob, r domain.DeliveryAttempted, deadLetter bool,
	md eventstore.Metadata, now time.Time) error {
	dest, org, env := j.DestinationID, j.OrgID, j.EnvID
	transition := ""
	if bc.cfg.Enabled {
		transition = bc.c.Record(r.Status == domain.AttemptSuccess, bc.cfg, now)
	}
	switch transition {
	case domain.EvCircuitOpened:
		reason := fmt.Sprintf("%d consecutive failures", bc.c.Failures)
		if err := circuit.AppendEvent(ctx, tx, e.p.Store, org, env, domain.EvCircuitOpened,
			domain.CircuitChanged{DestinationID: dest, FailureCount: bc.c.Failures, Reason: reason, At: now}, md); err != nil {
			return err
		}
		if err := issues.Record(ctx, tx, e.p.Store, issues.Occurrence{Org: org, Env: env, Dest: dest, DestName: bc.destName, Class: "circuit_open",
			DeliveryID: j.DeliveryID, AttemptID: r.AttemptID, EventID: j.EventID, Err: "circuit opened after " + reason, Status: r.ResponseStatus}, now); err != nil {
			return err
		}
	case domain.EvCircuitClosed:
		if err := circuit.AppendEvent(ctx, tx, e.p.Store, org, env, domain.EvCircuitClosed,
			domain.CircuitChanged{DestinationID: dest, Reason: "a delivery succeeded", At: now}, md); err != nil {
			return err
		}
	}
	if !deadLetter {
		return nil
	}
	msg := ""
	if r.Error != nil {
		msg = *r.Error
	}
	return issues.Record(ctx, tx, e.p.Store, issues.Occurrence{Org: org, Env: env, Dest: dest, DestName: bc.destName, Class: domain.ErrorClass(r),
		DeliveryID: j.DeliveryID, AttemptID: r.AttemptID, EventID: j.EventID, Err: msg, Status: r.ResponseStatus}, now)
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
