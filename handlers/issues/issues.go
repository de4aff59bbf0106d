// Package issues groups failures into issues: one per destination and error
// kind, opened by dead letters and opening circuits, resolved by hand or when
// quiet for AutoResolve, and the API over them.
package issues

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/projections"
)

// Tracker answers the issues endpoints.
type Tracker struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
	now   func() time.Time
}

// New returns the issues endpoints' service.
func New(pool *pgxpool.Pool, store *eventstore.Store, now func() time.Time) *Tracker {
	return &Tracker{pool: pool, store: store, now: func() time.Time { return now().UTC() }}
}

// Issue is hookstream's issue object (OpenAPI fields, plus the hand-written
// docs' error_type, message and recent_attempt_ids).
type Issue struct {
	ID               string   `json:"id"`
	OrgID            string   `json:"org_id"`
	EnvID            string   `json:"env_id"`
	DestinationID    string   `json:"destination_id"`
	DestinationName  *string  `json:"destination_name"`
	Fingerprint      string   `json:"fingerprint"`
	ErrorType        string   `json:"error_type"`
	Title            string   `json:"title"`
	Message          *string  `json:"message"`
	Status           string   `json:"status"`
	SnoozedUntil     *string  `json:"snoozed_until"`
	OccurrenceCount  int      `json:"occurrence_count"`
	FirstSeenAt      string   `json:"first_seen_at"`
	LastSeenAt       string   `json:"last_seen_at"`
	ResolvedAt       *string  `json:"resolved_at"`
	LastAttemptID    *string  `json:"last_attempt_id"`
	LastEventID      *string  `json:"last_event_id"`
	LastError        *string  `json:"last_error"`
	LastStatusCode   *int     `json:"last_status_code"`
	RecentAttemptIDs []string `json:"recent_attempt_ids"`
	CreatedAt        string   `json:"created_at"`
	UpdatedAt        string   `json:"updated_at"`
}

const issueCols = `i.id, i.org_id, i.env_id, i.destination_id, i.destination_name, i.fingerprint, i.error_type, i.title, i.status, i.snoozed_until,
	i.occurrence_count, i.first_seen_at, i.last_seen_at, i.resolved_at, i.last_attempt_id, i.last_event_id, i.last_error, i.last_status_code,
	i.created_at, i.updated_at,
	ARRAY(SELECT coalesce(x.attempt_id, '') FROM issue_deliveries x WHERE x.issue_id = i.id ORDER BY x.seen_at DESC LIMIT 10)`

func scanIssue(row pgx.Row) (Issue, error) {
	var i Issue
	var snoozed, resolved *time.Time
	var first, last, created, updated time.Time
	err := row.Scan(&i.ID, &i.OrgID, &i.EnvID, &i.DestinationID, &i.DestinationName, &i.Fingerprint, &i.ErrorType, &i.Title, &i.Status, &snoozed,
		&i.OccurrenceCount, &first, &last, &resolved, &i.LastAttemptID, &i.LastEventID, &i.LastError, &i.LastStatusCode, &created, &updated,
		&i.RecentAttemptIDs)
	i.SnoozedUntil, i.ResolvedAt = kit.ISOTimePtr(snoozed), kit.ISOTimePtr(resolved)
	i.FirstSeenAt, i.LastSeenAt, i.CreatedAt, i.UpdatedAt = kit.ISOTime(first), kit.ISOTime(last), kit.ISOTime(created), kit.ISOTime(updated)
	i.Message = i.LastError
	return i, err
}

// Filter are GET /v1/issues' filters; Status "all" lists every status.
type Filter struct {
	Status, DestinationID string
	Limit, Offset         int
}

// ListIssues lists the tenant's issues, most recently seen first.
func (s *Tracker) ListIssues(ctx context.Context, t domain.Tenant, f Filter) ([]Issue, projections.Pagination, error) {
	if f.Status == "" {
		f.Status = "open"
	}
	if f.Status != "all" && f.Status != "open" && f.Status != "acknowledged" && f.Status != "resolved" {
		return nil, projections.Pagination{}, domain.Errorf(domain.EInvalid, "Invalid query: 'status' must be one of open, acknowledged, resolved, all")
	}
	where := `i.org_id = $1 AND i.env_id = $2 AND ($3 = 'all' OR i.status = $3) AND ($4 = '' OR i.destination_id = $4)`
	out, p, err := projections.PageQuery(ctx, s.pool, "issues i", issueCols, where, "i.last_seen_at DESC, i.id DESC", []any{t.OrgID, t.EnvID, f.Status, f.DestinationID},
		f.Limit, f.Offset, scanIssue)
	if err != nil {
		return nil, p, fmt.Errorf("list issues: %w", err)
	}
	return out, p, nil
}

// IssueSummary counts the tenant's issues by status.
func (s *Tracker) IssueSummary(ctx context.Context, t domain.Tenant) (map[string]int, error) {
	out := map[string]int{"open": 0, "acknowledged": 0, "resolved": 0}
	rows, err := s.pool.Query(ctx, `SELECT status, count(*) FROM issues WHERE org_id = $1 AND env_id = $2 GROUP BY status`, t.OrgID, t.EnvID)
	if err != nil {
		return nil, fmt.Errorf("issue summary: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}

// GetIssue returns one issue, or ENotFound "Issue not found".
func (s *Tracker) GetIssue(ctx context.Context, t domain.Tenant, id string) (Issue, error) {
	if !kit.ValidID(id) {
		return Issue{}, kit.NotFound("Issue")
	}
	i, err := scanIssue(s.pool.QueryRow(ctx, `SELECT `+issueCols+` FROM issues i WHERE i.id = $1 AND i.org_id = $2 AND i.env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Issue{}, kit.NotFound("Issue")
	}
	if err != nil {
		return Issue{}, fmt.Errorf("get issue: %w", err)
	}
	return i, nil
}

// Input is PATCH /v1/issues/{id}'s body; snoozed_until null clears it.
type Input struct {
	Status       *string         `json:"status"`
	SnoozedUntil *nullableString `json:"snoozed_until"`
}

// nullableString tells an explicit JSON null from an absent field.
type nullableString struct {
	Value *string
}

// UnmarshalJSON accepts a string or null.
func (n *nullableString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		n.Value = nil
		return nil
	}
	var s string
	if err := jsonUnmarshalString(b, &s); err != nil {
		return err
	}
	n.Value = &s
	return nil
}

// UpdateIssue changes an issue's status (open, acknowledged, resolved) and snooze.
func (s *Tracker) UpdateIssue(ctx context.Context, t domain.Tenant, id string, in Input, rid string) (Issue, error) {
	cur, err := s.GetIssue(ctx, t, id)
	if err != nil {
		return Issue{}, err
	}
	status := cur.Status
	if in.Status != nil {
		switch *in.Status {
		case "open", "acknowledged", "resolved":
			status = *in.Status
		default:
			return Issue{}, kit.Invalidf("'status' must be one of open, acknowledged, resolved")
		}
	}
	var snooze *time.Time
	if cur.SnoozedUntil != nil {
		t, _ := time.Parse(time.RFC3339Nano, *cur.SnoozedUntil)
		snooze = &t
	}
	if in.SnoozedUntil != nil {
		snooze = nil
		if v := in.SnoozedUntil.Value; v != nil {
			t, err := time.Parse(time.RFC3339Nano, *v)
			if err != nil {
				return Issue{}, kit.Invalidf("'snoozed_until' must be an ISO 8601 time or null")
			}
			snooze = &t
		}
	}
	now := s.now()
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if status != "resolved" && cur.Status == "resolved" {
			var other bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM issues WHERE fingerprint = $1 AND status <> 'resolved' AND id <> $2)`,
				cur.Fingerprint, id).Scan(&other); err != nil {
				return err
			}
			if other {
				return domain.Errorf(domain.EConflict, "Another unresolved issue groups the same destination and error type")
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE issues SET status = $2, snoozed_until = $3, updated_at = $4,
				resolved_at = CASE WHEN $2 = 'resolved' THEN coalesce(resolved_at, $4) ELSE NULL END WHERE id = $1`, id, status, snooze, now); err != nil {
			return err
		}
		evType := domain.EvIssueUpdated
		if status == "resolved" && cur.Status != "resolved" {
			evType = domain.EvIssueResolved
		}
		_, err := s.store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamIssue, StreamID: id, OrgID: t.OrgID, EnvID: t.EnvID,
			Expected: eventstore.AnyVersion, Events: []eventstore.NewEvent{{Type: evType, Metadata: eventstore.Metadata{Actor: t.Actor, RequestID: rid},
				Payload: domain.IssueChanged{IssueID: id, Status: status, SnoozedUntil: snooze, At: now}}}})
		return err
	})
	if err != nil {
		if domain.ErrorCode(err) != domain.EInternal {
			return Issue{}, err
		}
		return Issue{}, fmt.Errorf("update issue: %w", err)
	}
	return s.GetIssue(ctx, t, id)
}

func jsonUnmarshalString(b []byte, s *string) error {
	if len(b) < 2 || b[0] != '"' {
		return &json.UnmarshalTypeError{Value: "non-string", Type: reflect.TypeOf("")}
	}
	return json.Unmarshal(b, s)
}
