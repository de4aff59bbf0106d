package issues

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
	"github.com/hookstream/hookstream/internal/kit"
)

// RunResolver auto-resolves quiet issues once a minute until ctx ends.
func RunResolver(ctx context.Context, pool *pgxpool.Pool, store *eventstore.Store, now func() time.Time, log *slog.Logger) {
	ticker := time.NewTicker(time.Minute)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if _, err := ResolveStale(ctx, pool, store, now().UTC()); err != nil && ctx.Err() == nil {
				log.Error("resolve issues", "err", err)
			}
		}
	}
}

// AutoResolve is how long an issue stays open without a new failure.
const AutoResolve = 30 * time.Minute

// Occurrence is one failure grouped into an issue.
type Occurrence struct {
	Org, Env, Dest, DestName, Class string
	DeliveryID, AttemptID, EventID  string
	Err                             string
	Status                          *int
}

var issueTitles = map[string]string{
	"http_4xx": "returns 4xx errors", "http_5xx": "returns 5xx errors", "timeout": "times out",
	"network": "cannot be reached", "circuit_open": "circuit breaker opened",
}

// Record opens the issue of (destination, error class), or adds the
// occurrence to the one that is not resolved, in the caller's transaction.
func Record(ctx context.Context, tx pgx.Tx, store *eventstore.Store, o Occurrence, now time.Time) error {
	fingerprint := o.Dest + ":" + o.Class
	var id string
	err := tx.QueryRow(ctx, `SELECT id FROM issues WHERE fingerprint = $1 AND status <> 'resolved' FOR UPDATE`, fingerprint).Scan(&id)
	evType := domain.EvIssueRecurred
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		id, evType = kit.NewID(), domain.EvIssueOpened
		title := fmt.Sprintf("%s %s", kit.OrDefault(o.DestName, o.Dest), issueTitles[o.Class])
		_, err = tx.Exec(ctx, `INSERT INTO issues (id, org_id, env_id, destination_id, destination_name, fingerprint, error_type, title, status,
				occurrence_count, first_seen_at, last_seen_at, last_attempt_id, last_event_id, last_error, last_status_code, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', 1, $9, $9, $10, $11, $12, $13, $9, $9)`,
			id, o.Org, o.Env, o.Dest, o.DestName, fingerprint, o.Class, title, now, o.AttemptID, o.EventID, o.Err, o.Status)
	case err == nil:
		_, err = tx.Exec(ctx, `UPDATE issues SET occurrence_count = occurrence_count + 1, last_seen_at = $2, last_attempt_id = $3,
				last_event_id = $4, last_error = $5, last_status_code = $6, destination_name = $7, updated_at = $2 WHERE id = $1`,
			id, now, o.AttemptID, o.EventID, o.Err, o.Status, o.DestName)
	}
	if err != nil {
		return fmt.Errorf("record issue: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO issue_deliveries (issue_id, delivery_id, attempt_id, seen_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (issue_id, delivery_id) DO UPDATE SET attempt_id = excluded.attempt_id, seen_at = excluded.seen_at`,
		id, o.DeliveryID, o.AttemptID, now); err != nil {
		return fmt.Errorf("record issue delivery: %w", err)
	}
	_, err = store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamIssue, StreamID: id, OrgID: o.Org, EnvID: o.Env,
		Expected: eventstore.AnyVersion, Events: []eventstore.NewEvent{{Type: evType, Metadata: eventstore.Metadata{Actor: "engine", CorrelationID: o.EventID},
			Payload: domain.IssueChanged{IssueID: id, DestinationID: o.Dest, ErrorType: o.Class, DeliveryID: o.DeliveryID, AttemptID: o.AttemptID,
				EventID: o.EventID, Error: o.Err, StatusCode: o.Status, At: now}}}})
	return err
}

// ResolveStale resolves every issue with no new failure for
// AutoResolve before now, and returns how many it resolved. The engine
// runs it every minute; it takes the time so tests can move the clock.
func ResolveStale(ctx context.Context, pool *pgxpool.Pool, store *eventstore.Store, now time.Time) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE issues SET status = 'resolved', resolved_at = $1, updated_at = $1
			WHERE status IN ('open', 'acknowledged') AND last_seen_at < $2 RETURNING id, org_id, env_id`, now, now.Add(-AutoResolve))
		type res struct{ id, org, env string }
		resolved, err := kit.CollectRows(rows, err, func(r pgx.Row) (res, error) {
			var x res
			return x, r.Scan(&x.id, &x.org, &x.env)
		})
		if err != nil {
			return err
		}
		for _, x := range resolved {
			if _, err := store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamIssue, StreamID: x.id, OrgID: x.org, EnvID: x.env,
				Expected: eventstore.AnyVersion, Events: []eventstore.NewEvent{{Type: domain.EvIssueResolved, Metadata: eventstore.Metadata{Actor: "engine"},
					Payload: domain.IssueChanged{IssueID: x.id, Status: "resolved", Error: "no new failure for 30 minutes", At: now}}}}); err != nil {
				return err
			}
		}
		n = len(resolved)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("resolve stale issues: %w", err)
	}
	return n, nil
}
