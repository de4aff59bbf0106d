package projections

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hookstream/hookstream/domain"
)

// TailCursor is a position in the log's commit order: the next read returns
// what was committed after it.
type TailCursor struct {
	Tx  uint64 // transaction id (xid8)
	Pos int64  // global position within it
}

// String is the cursor as an SSE event id: "tx:pos".
func (c TailCursor) String() string {
	return strconv.FormatUint(c.Tx, 10) + ":" + strconv.FormatInt(c.Pos, 10)
}

// ParseTailCursor reads a cursor written by String (a Last-Event-ID).
func ParseTailCursor(s string) (TailCursor, bool) {
	tx, pos, ok := strings.Cut(s, ":")
	if !ok {
		return TailCursor{}, false
	}
	t, err1 := strconv.ParseUint(tx, 10, 64)
	p, err2 := strconv.ParseInt(pos, 10, 64)
	if err1 != nil || err2 != nil || p < 0 {
		return TailCursor{}, false
	}
	return TailCursor{Tx: t, Pos: p}, true
}

// TailEvent is one ingested webhook as the live tail shows it: what the
// EventReceived event says, without body or headers.
type TailEvent struct {
	ID          string    `json:"id"`
	SourceID    string    `json:"source_id"`
	SourceName  string    `json:"source_name"`
	Method      string    `json:"method"`
	ContentType string    `json:"content_type"`
	BodySize    int64     `json:"body_size"`
	Deliveries  int       `json:"deliveries"`
	ReceivedAt  time.Time `json:"received_at"`
	Cursor      string    `json:"cursor"`
}

// TailStart is where a new tail begins: the oldest transaction still
// running, so everything committed from now on is read (and a few webhooks
// committed just before, by transactions that began earlier).
func (r *Reads) TailStart(ctx context.Context) (TailCursor, error) {
	var c TailCursor
	err := r.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::numeric::bigint`).Scan(&c.Tx)
	return c, err
}

// TailEvents returns the tenant's webhooks committed after c, in commit
// order (at most limit), and the cursor to read from next. It reads only
// transactions older than every running one (below the snapshot's xmin),
// so a webhook committed late by an older transaction is never skipped.
// When fewer than limit come back, the next cursor jumps to that horizon:
// a poll scans only what was committed since the previous one, whatever
// the other tenants write.
func (r *Reads) TailEvents(ctx context.Context, t domain.Tenant, c TailCursor, limit int) ([]TailEvent, TailCursor, error) {
	rows, err := r.pool.Query(ctx, `WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
		SELECT h.x::text, e.tx, e.global_position, e.stream_id, e.recorded_at, e.source_id, e.source_name, e.method, e.content_type, e.body_size, e.deliveries
		FROM h LEFT JOIN LATERAL (
			SELECT transaction_id::text AS tx, global_position, stream_id, recorded_at,
				coalesce(payload->>'source_id', '') AS source_id, coalesce(payload->>'source_name', '') AS source_name,
				coalesce(payload->>'method', '') AS method, coalesce(payload->>'content_type', '') AS content_type,
				coalesce((payload->>'body_size')::bigint, 0) AS body_size, coalesce((payload->>'deliveries')::int, 0) AS deliveries
			FROM events
			WHERE (transaction_id, global_position) > ($1::text::xid8, $2) AND transaction_id < h.x
				AND event_type = $3 AND org_id = $4 AND env_id = $5
			ORDER BY transaction_id, global_position LIMIT $6) e ON true`,
		strconv.FormatUint(c.Tx, 10), c.Pos, domain.EvEventReceived, t.OrgID, t.EnvID, limit)
	if err != nil {
		return nil, c, fmt.Errorf("tail events: %w", err)
	}
	defer rows.Close()
	var out []TailEvent
	var horizon string
	for rows.Next() {
		var tx, id, src, srcName, method, ctype *string
		var pos, size *int64
		var n *int
		var at *time.Time
		if err := rows.Scan(&horizon, &tx, &pos, &id, &at, &src, &srcName, &method, &ctype, &size, &n); err != nil {
			return nil, c, fmt.Errorf("tail events: %w", err)
		}
		if tx == nil {
			continue // no webhook: the LEFT JOIN's one empty row
		}
		cur, ok := ParseTailCursor(*tx + ":" + strconv.FormatInt(*pos, 10))
		if !ok {
			return nil, c, fmt.Errorf("tail events: transaction id %q", *tx)
		}
		c = cur
		out = append(out, TailEvent{ID: *id, SourceID: *src, SourceName: *srcName, Method: *method, ContentType: *ctype, BodySize: *size,
			Deliveries: *n, ReceivedAt: at.UTC(), Cursor: cur.String()})
	}
	if err := rows.Err(); err != nil {
		return nil, c, fmt.Errorf("tail events: %w", err)
	}
	if len(out) < limit {
		x, err := strconv.ParseUint(horizon, 10, 64)
		if err != nil {
			return nil, c, fmt.Errorf("tail events: horizon %q", horizon)
		}
		if x > c.Tx {
			c = TailCursor{Tx: x} // everything below x is read; x's own rows come next
		}
	}
	return out, c, nil
}
