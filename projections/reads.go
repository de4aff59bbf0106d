package projections

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
)

// Attempt is the seed's delivery_attempt object: its 24 fields, and delivery_id.
type Attempt struct {
	ID              string  `json:"id"`
	OrgID           string  `json:"org_id"`
	EnvID           string  `json:"env_id"`
	EventID         string  `json:"event_id"`
	ConnectionID    string  `json:"connection_id"`
	DestinationID   string  `json:"destination_id"`
	RequestURL      string  `json:"request_url"`
	RequestMethod   string  `json:"request_method"`
	RequestHeaders  *string `json:"request_headers"`
	RequestBodySize int     `json:"request_body_size"`
	ResponseStatus  *int    `json:"response_status"`
	ResponseHeaders *string `json:"response_headers"`
	ResponseBody    *string `json:"response_body"`
	DurationMS      *int    `json:"duration_ms"`
	Status          string  `json:"status"`
	Error           *string `json:"error"`
	CreatedAt       string  `json:"created_at"`
	AttemptNumber   *int    `json:"attempt_number"`
	NextRetryAt     *string `json:"next_retry_at"`
	IsDLQ           *int    `json:"is_dlq"`
	DLQAt           *string `json:"dlq_at"`
	TriggerType     *string `json:"trigger_type"`
	ConnectionName  *string `json:"connection_name"`
	DestinationName *string `json:"destination_name"`
	// DeliveryID is the delivery (one event through one connection) the
	// attempt belongs to: what audit delivery and events stream take. An
	// extra field beside the seed's 24.
	DeliveryID string `json:"delivery_id"`
}

// attemptCols are an attempt's columns (from delivery_attempts, unaliased)
// in scanAttempt's order. Its request headers, response headers and body
// are read from the DeliveryAttempted it was projected from (attempted_pos,
// a look-up by the log's primary key, within the attempt's tenant; none
// while pending): the read model keeps no copy of them (migration 0024). A
// payload retention expired has none left, so an expired attempt shows them
// null.
const attemptCols = `id, org_id, env_id, event_id, connection_id, destination_id, request_url, request_method,
	(SELECT ARRAY[NULLIF(e.payload->>'request_headers', ''), e.payload->>'response_headers', e.payload->>'response_body']
		FROM events e WHERE e.global_position = delivery_attempts.attempted_pos
			AND e.org_id = delivery_attempts.org_id AND e.env_id = delivery_attempts.env_id),
	request_body_size, response_status, duration_ms, status, error, created_at, attempt_number,
	next_retry_at, is_dlq, dlq_at, trigger_type, connection_name, destination_name, delivery_id`

func scanAttempt(row pgx.Row, extra ...any) (Attempt, error) {
	var a Attempt
	var created time.Time
	var next, dlq *time.Time
	var logged []*string // request headers, response headers, response body
	err := row.Scan(append([]any{&a.ID, &a.OrgID, &a.EnvID, &a.EventID, &a.ConnectionID, &a.DestinationID, &a.RequestURL, &a.RequestMethod,
		&logged, &a.RequestBodySize, &a.ResponseStatus, &a.DurationMS, &a.Status,
		&a.Error, &created, &a.AttemptNumber, &next, &a.IsDLQ, &dlq, &a.TriggerType, &a.ConnectionName, &a.DestinationName, &a.DeliveryID}, extra...)...)
	if len(logged) == 3 {
		a.RequestHeaders, a.ResponseHeaders, a.ResponseBody = logged[0], logged[1], logged[2]
	}
	a.CreatedAt = kit.ISOTime(created)
	a.NextRetryAt, a.DLQAt = kit.ISOTimePtr(next), kit.ISOTimePtr(dlq)
	return a, err
}

// AttemptFilter are the list filters of GET /v1/delivery-attempts.
type AttemptFilter struct {
	EventID, DeliveryID, ConnectionID, DestinationID, Status string
	IsDLQ                                                    *int
	// Recovered keeps attempts whose delivery has (1) or has not (0) had a
	// successful attempt since: the dashboard's open dead letters are
	// is_dlq=1 and recovered=0.
	Recovered     *int
	Limit, Offset int
	// Cursor reads from a position instead of Offset (older rows; newer
	// with Prev).
	Cursor *Cursor
	Prev   bool
}

// ListAttempts lists the tenant's attempts, newest first.
func (r *Reads) ListAttempts(ctx context.Context, t domain.Tenant, f AttemptFilter) ([]Attempt, Pagination, error) {
	where := `org_id = $1 AND env_id = $2 AND ($3 = '' OR event_id = $3) AND ($4 = '' OR connection_id = $4)
		AND ($5 = '' OR destination_id = $5) AND ($6 = '' OR status = $6) AND ($7::int IS NULL OR is_dlq = $7)
		AND ($8 = '' OR delivery_id = $8 AND event_id = (SELECT event_id FROM projected_deliveries WHERE delivery_id = $8))
		AND ($9::int IS NULL OR EXISTS (SELECT 1 FROM delivery_attempts b WHERE b.event_id = delivery_attempts.event_id
			AND b.delivery_id = delivery_attempts.delivery_id AND b.attempt_number > delivery_attempts.attempt_number AND b.status = 'success')::int = $9)`
	// A delivery's attempts are found through its event (indexed; the
	// helper row names it): delivery_attempts keeps no index on delivery_id,
	// which every attempt row would pay for (migration 0011).
	args := []any{t.OrgID, t.EnvID, f.EventID, f.ConnectionID, f.DestinationID, f.Status, f.IsDLQ, f.DeliveryID, f.Recovered}
	counted := ""
	if f.EventID == "" && f.ConnectionID == "" && f.DestinationID == "" && f.Status == "" && f.IsDLQ == nil && f.DeliveryID == "" && f.Recovered == nil {
		counted = "attempts"
	}
	out, p, err := ListPage(ctx, r.pool, List{Kind: "at", Table: "delivery_attempts", Cols: attemptCols + ", created_at", Where: where,
		TimeCol: "created_at", IDCol: "id", Args: args, Limit: f.Limit, Offset: f.Offset, Cursor: f.Cursor, Prev: f.Prev, Counted: counted},
		func(row pgx.Row) (Attempt, Cursor, error) {
			var at time.Time
			a, err := scanAttempt(row, &at)
			return a, Cursor{At: at, ID: a.ID}, err
		})
	if err != nil {
		return nil, p, fmt.Errorf("list attempts: %w", err)
	}
	return out, p, nil
}

// GetAttempt returns one attempt of the tenant, or ENotFound "Delivery attempt not found".
func (r *Reads) GetAttempt(ctx context.Context, t domain.Tenant, id string) (Attempt, error) {
	if !kit.ValidID(id) {
		return Attempt{}, kit.NotFound("Delivery attempt")
	}
	a, err := scanAttempt(r.pool.QueryRow(ctx, `SELECT `+attemptCols+` FROM delivery_attempts WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Attempt{}, kit.NotFound("Delivery attempt")
	}
	if err != nil {
		return Attempt{}, fmt.Errorf("get attempt: %w", err)
	}
	return a, nil
}

// EventSummary is an item of GET /v1/events.
type EventSummary struct {
	ID                 string  `json:"id"`
	SourceID           string  `json:"source_id"`
	OrgID              string  `json:"org_id"`
	EnvID              string  `json:"env_id"`
	Method             string  `json:"method"`
	ContentType        *string `json:"content_type"`
	SourceIP           *string `json:"source_ip"`
	PayloadSize        int     `json:"payload_size"`
	VerificationStatus string  `json:"verification_status"`
	DedupStatus        string  `json:"dedup_status"`
	DedupHash          *string `json:"dedup_hash"`
	Status             string  `json:"status"`
	ReceivedAt         string  `json:"received_at"`
	SourceName         *string `json:"source_name"`
	SourceSlug         *string `json:"source_slug"`
}

// EventDetail is GET /v1/events/{id}'s event.
type EventDetail struct {
	EventSummary
	Headers     json.RawMessage `json:"headers"`
	QueryParams json.RawMessage `json:"query_params"`
	// RawQuery is the query string exactly as sent; RawQueryB64 its bytes
	// instead when text cannot hold them (then RawQuery is null).
	RawQuery    *string `json:"raw_query"`
	RawQueryB64 *string `json:"raw_query_b64,omitempty"`
	// HeadersB64 are the exact bytes, base64, of the header values shown
	// with U+FFFD in Headers (invalid UTF-8); absent when there are none.
	HeadersB64    json.RawMessage `json:"headers_b64,omitempty"`
	Payload       any             `json:"payload"`
	PayloadInline *string         `json:"payload_inline"`
	// SkippedConnections are the connections the event was not delivered
	// through, and why (filtered, connection or destination disabled,
	// source paused, duplicate); [] when every route got a delivery.
	SkippedConnections []domain.SkippedRoute `json:"skipped_connections"`
	// PayloadExpiredAt is when the environment's retention removed the
	// body, headers and query (then payload, headers and query_params are
	// null and BodySHA256 identifies the body that was); absent before.
	PayloadExpiredAt *string `json:"payload_expired_at,omitempty"`
	BodySHA256       *string `json:"body_sha256,omitempty"`
}

const eventCols = `id, source_id, org_id, env_id, method, content_type, source_ip, payload_size, status, received_at, source_name, source_slug,
	verification_status, dedup_status, dedup_hash`

func scanEventSummary(row pgx.Row, extra ...any) (EventSummary, error) {
	var e EventSummary
	var received time.Time
	err := row.Scan(append([]any{&e.ID, &e.SourceID, &e.OrgID, &e.EnvID, &e.Method, &e.ContentType, &e.SourceIP, &e.PayloadSize,
		&e.Status, &received, &e.SourceName, &e.SourceSlug, &e.VerificationStatus, &e.DedupStatus, &e.DedupHash}, extra...)...)
	e.ReceivedAt = kit.ISOTime(received)
	return e, err
}

// EventFilter are the list filters of GET /v1/events.
type EventFilter struct {
	SourceID, Status, Method        string
	DedupStatus, VerificationStatus string
	After, Before                   *time.Time
	Limit, Offset                   int
	// Cursor reads from a position instead of Offset (older rows; newer
	// with Prev).
	Cursor *Cursor
	Prev   bool
	// Search keeps the events whose id starts with it or whose body holds
	// it (bytes, case-sensitive), reading at most ScanLimit events a
	// request; a full event id is looked up by key instead.
	Search string
	// ScanLimit bounds a search's read (0: SearchScan).
	ScanLimit int
}

// SearchScan is how many events, newest first, one search request reads at
// most: a search over a large log is bounded per request, and when it
// stops short of a full page its next_cursor continues where it stopped.
const SearchScan = 20000

// ListEvents lists the tenant's ingested events, newest first.
func (r *Reads) ListEvents(ctx context.Context, t domain.Tenant, f EventFilter) ([]EventSummary, Pagination, error) {
	where := `org_id = $1 AND env_id = $2 AND ($3 = '' OR source_id = $3) AND ($4 = '' OR status = $4) AND ($5 = '' OR method = $5)
		AND ($6::timestamptz IS NULL OR received_at > $6) AND ($7::timestamptz IS NULL OR received_at < $7)
		AND ($8 = '' OR dedup_status = $8) AND ($9 = '' OR verification_status = $9)`
	args := []any{t.OrgID, t.EnvID, f.SourceID, f.Status, f.Method, f.After, f.Before, f.DedupStatus, f.VerificationStatus}
	byID := kit.ValidID(f.Search)
	if byID {
		// A full event id finds that event through the key, however old.
		where += ` AND id = $10`
		args = append(args, f.Search)
		f.Search, f.Offset = "", 0
	}
	if f.Search != "" {
		out, p, err := r.searchEvents(ctx, where, args, f)
		if err != nil {
			return nil, p, fmt.Errorf("search events: %w", err)
		}
		return out, p, nil
	}
	counted := ""
	if f.SourceID == "" && f.Status == "" && f.Method == "" && f.After == nil && f.Before == nil && f.DedupStatus == "" && f.VerificationStatus == "" && !byID {
		counted = "events"
	}
	out, p, err := ListPage(ctx, r.pool, List{Kind: "ev", Table: "events_view", Cols: eventCols + ", received_at", Where: where,
		TimeCol: "received_at", IDCol: "id", Args: args, Limit: f.Limit, Offset: f.Offset, Cursor: f.Cursor, Prev: f.Prev, Counted: counted}, scanEventKeyed)
	if err != nil {
		return nil, p, fmt.Errorf("list events: %w", err)
	}
	return out, p, nil
}

func scanEventKeyed(row pgx.Row) (EventSummary, Cursor, error) {
	var at time.Time
	e, err := scanEventSummary(row, &at)
	return e, Cursor{At: at, ID: e.ID}, err
}

var idPrefix = regexp.MustCompile(`^[0-9a-f]{1,32}$`)

// searchEvents reads at most SearchScan events matching the filters, newest
// first from the cursor, and keeps those whose id starts with f.Search or
// whose body holds it. The match is evaluated row by row in the scan's
// order and stops at a full page, so a frequent match costs a page and a
// rare one at most SearchScan bodies. (The body test is a scalar subquery,
// evaluated row by row: as an EXISTS the planner may turn it into a join
// that reads every scanned row first.)
func (r *Reads) searchEvents(ctx context.Context, where string, args []any, f EventFilter) ([]EventSummary, Pagination, error) {
	p := Pagination{Limit: f.Limit}
	scan := f.ScanLimit
	if scan <= 0 {
		scan = SearchScan
	}
	n := len(args)
	if f.Cursor != nil {
		args = append(args, f.Cursor.At, f.Cursor.ID)
		where += fmt.Sprintf(" AND (received_at, id) < ($%d::timestamptz, $%d::text)", n+1, n+2)
		n += 2
	}
	prefix := "" // an id prefix, when the search can be one
	if idPrefix.MatchString(f.Search) {
		prefix = f.Search
	}
	args = append(args, scan, prefix, []byte(f.Search), f.Limit+1)
	rows, err := r.pool.Query(ctx, fmt.Sprintf(`SELECT v.*, v.received_at FROM (
			SELECT %[1]s FROM events_view WHERE %[2]s ORDER BY received_at DESC, id DESC LIMIT $%[3]d) v
		WHERE ($%[5]d <> '' AND v.id LIKE $%[5]d || '%%') OR (SELECT position($%[6]d::bytea IN decode(e.payload->>'body_b64', 'base64')) > 0
			FROM events e WHERE e.stream_id = v.id AND e.stream_version = 1)
		ORDER BY v.received_at DESC, v.id DESC LIMIT $%[7]d`, eventCols, where, n+1, 0, n+2, n+3, n+4), args...)
	type keyed struct {
		e  EventSummary
		at Cursor
	}
	got, err := kit.CollectRows(rows, err, func(row pgx.Row) (keyed, error) {
		e, at, err := scanEventKeyed(row)
		return keyed{e, at}, err
	})
	if err != nil {
		return nil, p, err
	}
	out := make([]EventSummary, 0, min(len(got), f.Limit))
	for _, k := range got[:min(len(got), f.Limit)] {
		out = append(out, k.e)
	}
	if len(got) > f.Limit {
		p.HasMore, p.NextCursor = true, got[f.Limit-1].at.Encode("ev")
		return out, p, nil
	}
	// Short of a page: did the scan stop at its bound, before the end?
	var edge Cursor
	err = r.pool.QueryRow(ctx, fmt.Sprintf(`SELECT received_at, id FROM events_view WHERE %s ORDER BY received_at DESC, id DESC OFFSET $%d LIMIT 1`,
		where, n+1), append(args[:n:n], scan-1)...).Scan(&edge.At, &edge.ID)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, p, err
	default:
		p.HasMore, p.NextCursor = true, edge.Encode("ev")
	}
	return out, p, nil
}

// GetEvent returns one ingested event with headers, query and payload.
func (r *Reads) GetEvent(ctx context.Context, t domain.Tenant, id string) (EventDetail, error) {
	if !kit.ValidID(id) {
		return EventDetail{}, kit.NotFound("Event")
	}
	var d EventDetail
	var body string
	var skipped []byte
	var err error
	// The read model holds the summary; headers, query and body are the
	// EventReceived's (the first event of the event's stream).
	var headersB64 []byte
	var expiredAt *time.Time
	d.EventSummary, err = scanEventSummary(r.pool.QueryRow(ctx, `SELECT v.*, x.h, x.q, coalesce(x.b, ''), coalesce(x.s, '[]'), x.rq, x.rqb, x.hb,
			hs_ts(x.exp), x.sha
		FROM (SELECT `+eventCols+` FROM events_view WHERE id = $1 AND org_id = $2 AND env_id = $3) v
		LEFT JOIN LATERAL (SELECT payload->'headers' AS h, payload->'query' AS q, payload->>'body_b64' AS b, payload->'skipped' AS s,
				payload->>'raw_query' AS rq, payload->>'raw_query_b64' AS rqb, payload->'headers_b64' AS hb,
				payload->>'payload_expired_at' AS exp, payload->>'body_sha256' AS sha
			FROM events WHERE stream_id = v.id AND stream_version = 1) x ON true`, id, t.OrgID, t.EnvID), &d.Headers, &d.QueryParams, &body, &skipped,
		&d.RawQuery, &d.RawQueryB64, &headersB64, &expiredAt, &d.BodySHA256)
	d.PayloadExpiredAt = kit.ISOTimePtr(expiredAt)
	if len(headersB64) > 0 {
		d.HeadersB64 = headersB64
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return EventDetail{}, kit.NotFound("Event")
	}
	if err != nil {
		return EventDetail{}, fmt.Errorf("get event: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(body)
	if err != nil {
		return EventDetail{}, fmt.Errorf("get event %s: stored body: %w", id, err)
	}
	d.SkippedConnections = []domain.SkippedRoute{}
	if err := json.Unmarshal(skipped, &d.SkippedConnections); err != nil {
		return EventDetail{}, fmt.Errorf("get event %s: skipped connections: %w", id, err)
	}
	var parsed any
	if json.Unmarshal(raw, &parsed) == nil {
		d.Payload = parsed
	} else if len(raw) > 0 {
		d.Payload = string(raw)
	}
	if d.PayloadExpiredAt != nil {
		return d, nil // payload and payload_inline stay null
	}
	str := string(raw)
	d.PayloadInline = &str
	return d, nil
}

// Reads answers the API's queries of the delivery_attempts and events_view
// read models.
type Reads struct{ pool *pgxpool.Pool }

// NewReads returns the read queries on pool.
func NewReads(pool *pgxpool.Pool) *Reads { return &Reads{pool: pool} }
