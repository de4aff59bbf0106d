package circuit

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/internal/kit"
)

// Probes moves open circuits whose cooldown has passed to half-open
// and picks each half-open circuit's one probe (the oldest due delivery,
// or the delivery a manual retry named). It returns the probes to claim.
func Probes(ctx context.Context, pool *pgxpool.Pool, store *eventstore.Store, now time.Time) ([]string, error) {
	var probes []string
	var any bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM destination_circuits WHERE state <> 'closed')`).Scan(&any); err != nil || !any {
		return nil, err
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
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
			if err := AppendEvent(ctx, tx, store, o.org, o.env, domain.EvCircuitHalfOpened,
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
				  AND NOT `+jobs.PausedDestination("j.destination_id")+`
				  AND NOT `+jobs.PausedRoute("j.connection_id")+`
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
