package redeliver

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/projections"
)

// EventRetryResult is POST /v1/events/{id}/retry's answer.
type EventRetryResult struct {
	Retried []projections.Attempt `json:"retried"`
	Errors  []string              `json:"errors"`
	Message string                `json:"message"`
}

// RetryEvent retries every delivery of one event whose latest attempt failed
// (dead-lettered or waiting for an automatic retry): one manual attempt
// each, as POST /v1/delivery-attempts/{id}/retry would make, without waiting
// for the outcomes. It decides from the delivery streams, not from a read
// model that may lag. A delivery that cannot be retried is reported in
// Errors and does not stop the others. Replay deliveries are not the event's
// routing and are left alone.
func (s *Redeliverer) RetryEvent(ctx context.Context, t domain.Tenant, eventID, rid string) (EventRetryResult, error) {
	if _, err := s.reads.GetEvent(ctx, t, eventID); err != nil {
		return EventRetryResult{}, err
	}
	rows, err := s.pool.Query(ctx, EventDeliveriesSQL, eventID, t.OrgID, t.EnvID)
	ids, err := kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
		var id string
		return id, r.Scan(&id)
	})
	if err != nil {
		return EventRetryResult{}, fmt.Errorf("retry event: %w", err)
	}
	return s.retryFailedDeliveries(ctx, t, ids, rid, 0)
}

// retryFailedDeliveries makes one manual attempt for each delivery whose
// last attempt failed (folded from its stream), reporting refusals in Errors.
func (s *Redeliverer) retryFailedDeliveries(ctx context.Context, t domain.Tenant, ids []string, rid string, limit int) (EventRetryResult, error) {
	res := EventRetryResult{Retried: []projections.Attempt{}, Errors: []string{}}
	streams, err := s.store.LoadMany(ctx, s.pool, ids)
	if err != nil {
		return res, fmt.Errorf("retry: %w", err)
	}
	for _, id := range ids {
		if limit > 0 && len(res.Retried)+len(res.Errors) >= limit {
			break
		}
		d, err := kit.FoldDelivery(streams[id])
		if err != nil {
			return res, err
		}
		last, ok := d.RetryableFailure()
		if !ok {
			continue
		}
		req := d.Requested()
		orig := projections.Attempt{ID: last, EventID: req.EventID, ConnectionID: req.ConnectionID, DestinationID: req.DestinationID}
		a, err := s.retryDelivery(ctx, t, id, orig, false, rid)
		if err != nil {
			if domain.ErrorCode(err) == domain.EInternal {
				return res, err
			}
			res.Errors = append(res.Errors, fmt.Sprintf("destination %s (attempt %s): %s", kit.OrDefault(req.DestinationName, req.DestinationID), last, err.Error()))
			continue
		}
		res.Retried = append(res.Retried, a)
	}
	if len(res.Retried) == 0 && len(res.Errors) == 0 {
		res.Message = "No failed deliveries to retry"
	} else {
		res.Message = fmt.Sprintf("Retried %d of %d failed deliveries", len(res.Retried), len(res.Retried)+len(res.Errors))
	}
	return res, nil
}

// RetryIssue retries every delivery grouped under the issue whose last
// attempt failed, as the event-level retry does.
func (s *Redeliverer) RetryIssue(ctx context.Context, t domain.Tenant, id, rid string) (EventRetryResult, error) {
	if _, err := s.issues.GetIssue(ctx, t, id); err != nil {
		return EventRetryResult{}, err
	}
	// Bounded per request: the oldest IssueRetryBatch failed deliveries
	// first, looking at no more than IssueRetryScan of the issue's; a retried
	// delivery is no longer a failure, so the next request goes on from there.
	rows, err := s.pool.Query(ctx, `SELECT delivery_id FROM issue_deliveries WHERE issue_id = $1 ORDER BY seen_at, delivery_id LIMIT $2`,
		id, IssueRetryScan+1)
	ids, err := kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
		var d string
		return d, r.Scan(&d)
	})
	if err != nil {
		return EventRetryResult{}, fmt.Errorf("retry issue: %w", err)
	}
	more := len(ids) > IssueRetryScan
	ids = ids[:min(len(ids), IssueRetryScan)]
	res, err := s.retryFailedDeliveries(ctx, t, ids, rid, IssueRetryBatch)
	if err == nil && (more || len(res.Retried)+len(res.Errors) >= IssueRetryBatch) {
		res.Message += fmt.Sprintf("; at most %d per request: retry the issue again for the rest", IssueRetryBatch)
	}
	return res, err
}

// Issue retry bounds: how many deliveries one request retries, and how many
// of the issue's deliveries it looks at to find them.
const (
	IssueRetryBatch = 100
	IssueRetryScan  = 2000
)

// EventDeliveriesSQL lists an event's deliveries ($1; tenant $2, $3): the
// live ones from delivery_jobs, the finished ones (whose job rows are
// pruned a minute after) from the attempts read model.
const EventDeliveriesSQL = `SELECT delivery_id FROM delivery_jobs WHERE event_id = $1 AND org_id = $2 AND env_id = $3
	UNION SELECT delivery_id FROM delivery_attempts WHERE event_id = $1 AND org_id = $2 AND env_id = $3 ORDER BY 1`
