package eventstore

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReadLast returns the last q.Limit events matching q's filters (After and
// Until are ignored), oldest first, below the commit-safe horizon.
func ReadLast(ctx context.Context, db DBTX, q RangeQuery) ([]Event, error) {
	types := q.Types
	if types == nil {
		types = []string{}
	}
	evs, err := collect(db.Query(ctx, `SELECT `+selectColumns+` FROM events WHERE global_position IN (
			SELECT global_position FROM events
			WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
			  AND (cardinality($2::text[]) = 0 OR event_type = ANY($2))
			  AND ($3 = '' OR stream_id = $3)
			ORDER BY transaction_id DESC, global_position DESC
			LIMIT $1)
		ORDER BY transaction_id, global_position`, q.Limit, types, q.StreamID))
	if err != nil {
		return nil, fmt.Errorf("read last events: %w", err)
	}
	return evs, nil
}

// ExportLine is one line of an NDJSON export: a stored event, complete.
type ExportLine struct {
	GlobalPosition int64           `json:"global_position"`
	EventID        string          `json:"event_id"`
	StreamType     string          `json:"stream_type"`
	StreamID       string          `json:"stream_id"`
	StreamVersion  int64           `json:"stream_version"`
	Type           string          `json:"type"`
	SchemaVersion  int             `json:"schema_version"`
	OrgID          string          `json:"org_id"`
	EnvID          string          `json:"env_id"`
	RecordedAt     time.Time       `json:"recorded_at"`
	Metadata       json.RawMessage `json:"metadata"`
	Payload        json.RawMessage `json:"payload"`
}

// TxBeginner starts transactions (a pool or a connection).
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Export writes every event recorded in [from, to) (of the given types, all
// when empty) to w as NDJSON in log order. It reads one snapshot (a
// read-only REPEATABLE READ transaction, which holds no transaction id and so
// delays no consumer group) in pages along the primary key, so memory stays
// constant however many events there are; the BRIN index on recorded_at
// bounds the positions it pages through.
func Export(ctx context.Context, pool TxBeginner, from, to time.Time, types []string, w io.Writer) (int64, error) {
	if types == nil {
		types = []string{}
	}
	db, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	defer db.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	var lo, hi *int64
	if err := db.QueryRow(ctx, `SELECT min(global_position), max(global_position) FROM events WHERE recorded_at >= $1 AND recorded_at < $2`,
		from, to).Scan(&lo, &hi); err != nil {
		return 0, fmt.Errorf("export: bounds: %w", err)
	}
	if lo == nil {
		return 0, nil
	}
	// Commit-order readers stop below the oldest running transaction; an
	// export of one snapshot needs no such bound: nothing it shows changes.
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(bw)
	var n int64
	// Fixed windows of positions, not LIMIT pages: each query is a bounded
	// primary-key range whatever the planner's statistics say (with stale
	// ones it sorted the whole remaining range for every page).
	const window = 5000
	for start := *lo; start <= *hi; start += window {
		rows, err := db.Query(ctx, `SELECT global_position, event_id::text, stream_type, stream_id, stream_version, event_type, schema_version,
				org_id, env_id, recorded_at, metadata::text, payload::text
			FROM events
			WHERE global_position >= $1 AND global_position < $2
			  AND recorded_at >= $3 AND recorded_at < $4 AND (cardinality($5::text[]) = 0 OR event_type = ANY($5))
			ORDER BY global_position`, start, start+window, from, to, types)
		if err != nil {
			return n, fmt.Errorf("export: %w", err)
		}
		var line ExportLine
		var meta, payload string
		for rows.Next() {
			if err := rows.Scan(&line.GlobalPosition, &line.EventID, &line.StreamType, &line.StreamID, &line.StreamVersion, &line.Type,
				&line.SchemaVersion, &line.OrgID, &line.EnvID, &line.RecordedAt, &meta, &payload); err != nil {
				rows.Close()
				return n, fmt.Errorf("export: %w", err)
			}
			line.Metadata, line.Payload = json.RawMessage(meta), json.RawMessage(payload)
			line.RecordedAt = line.RecordedAt.UTC()
			if err := enc.Encode(&line); err != nil {
				rows.Close()
				return n, fmt.Errorf("export: write: %w", err)
			}
			n++
		}
		if err := rows.Err(); err != nil {
			return n, fmt.Errorf("export: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("export: write: %w", err)
	}
	return n, nil
}
