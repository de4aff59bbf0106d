// Package eventstore is the append-only PostgreSQL event store: append at an
// expected version, load a stream, read everything in commit-safe order, and
// let Watermill consumer groups read the events table directly.
package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Expected-version sentinels for Append.
const (
	// AnyVersion appends after whatever the stream holds.
	AnyVersion int64 = -1
	// NoStream requires that the stream has no events yet.
	NoStream int64 = 0
)

var (
	// ErrConcurrency means the stream was not at the expected version: another
	// writer appended first. Reload, decide again, retry.
	ErrConcurrency = errors.New("eventstore: stream is not at the expected version")
	// ErrDuplicateEvent means an event with the same event id is already stored;
	// nothing of the append was stored.
	ErrDuplicateEvent = errors.New("eventstore: event id already stored")
	// ErrInvalid means the append itself was malformed (no events, empty ids).
	ErrInvalid = errors.New("eventstore: invalid append")
)

// DBTX is what the store runs statements on: a pool, a connection or a transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Metadata travels with every event: who and what caused it.
type Metadata struct {
	CorrelationID string `json:"correlation_id,omitempty"`
	CausationID   string `json:"causation_id,omitempty"`
	Actor         string `json:"actor,omitempty"`
	RequestID     string `json:"request_id,omitempty"`
}

// NewEvent is an event to append. ID defaults to a new UUIDv7.
type NewEvent struct {
	ID            uuid.UUID
	Type          string
	SchemaVersion int
	Payload       any // marshalled with encoding/json; json.RawMessage is kept as is
	Metadata      Metadata
	// Projected, when set, is the payload as the value a reader in this
	// process decodes it into (what Payload's JSON holds, without what the
	// projector does not read: an EventReceived's body, headers and query).
	// The projector folds it instead of decoding the JSON (recent.go).
	Projected any
}

// Event is a stored event.
type Event struct {
	GlobalPosition int64
	TransactionID  uint64
	EventID        uuid.UUID
	StreamType     string
	StreamID       string
	StreamVersion  int64
	Type           string
	SchemaVersion  int
	Payload        json.RawMessage
	Metadata       Metadata
	OrgID          string
	EnvID          string
	RecordedAt     time.Time
	// Decoded is Payload as its appender's value (NewEvent.Projected), when
	// this process appended it and ReadFolded found it; nil otherwise.
	Decoded any
}

// Position is a commit-order cursor: events are read ordered by
// (TransactionID, GlobalPosition), and a reader checkpoints the last pair.
type Position struct {
	TransactionID  uint64
	GlobalPosition int64
}

// Position returns the cursor just after e.
func (e Event) Position() Position {
	return Position{TransactionID: e.TransactionID, GlobalPosition: e.GlobalPosition}
}

// Store appends and reads events.
type Store struct {
	now func() time.Time
}

// New returns a store; now is its clock (time.Now when nil).
func New(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{now: now}
}

// StreamAppend is the events for one stream at one expected version.
type StreamAppend struct {
	StreamType string
	StreamID   string
	OrgID      string
	EnvID      string
	// Expected is the version the stream must be at: NoStream, an exact version, or AnyVersion.
	Expected int64
	Events   []NewEvent
}

// Append appends events to one stream. See AppendMany.
func (s *Store) Append(ctx context.Context, q DBTX, a StreamAppend) ([]Event, error) {
	return s.AppendMany(ctx, q, a)
}

const appendSQL = `
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[],
                         $7::jsonb[], $8::jsonb[], $9::text[], $10::text[]) WITH ORDINALITY
        AS i(event_id, stream_type, stream_id, expected, event_type, schema_version, payload, metadata, org_id, env_id, ord)
), cur AS (
    -- A new stream (NoStream) is not looked up: its events get versions
    -- from 1, and if the stream exists after all the unique (stream_id,
    -- stream_version) index refuses the first of them (ErrConcurrency).
    SELECT s.stream_id,
           CASE WHEN s.lookup THEN (SELECT coalesce(max(e.stream_version), 0) FROM events e WHERE e.stream_id = s.stream_id) ELSE 0 END AS v
    FROM (SELECT stream_id, bool_or(expected <> 0) AS lookup FROM input GROUP BY stream_id) s
), numbered AS (
    SELECT i.*, cur.v, row_number() OVER (PARTITION BY i.stream_id ORDER BY i.ord) AS n
    FROM input i JOIN cur USING (stream_id)
)
INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version,
                    payload, metadata, org_id, env_id, recorded_at)
SELECT event_id, stream_type, stream_id,
       CASE WHEN expected >= 0 AND expected <> v THEN hookstream_version_conflict() ELSE v + n END,
       event_type, schema_version, payload, metadata, org_id, env_id, $11
FROM numbered
ORDER BY ord
RETURNING global_position, transaction_id::text::bigint, event_id, stream_version`

// appendKnownSQL is appendSQL for appends that all expect a version
// (NoStream or an exact one; no AnyVersion), the engine's every append: the
// versions are known before the statement (expected + 1, + 2, ...), so it
// is a plain insert of the arrays, without appendSQL's per-stream lookup,
// grouping, join and numbering (half of that statement's executor time for
// an ingest's two or three events). The look at the stream's last version
// refuses an exact version the stream is not at (stale or ahead), as in
// appendSQL; two appends racing at one version meet at the unique
// (stream_id, stream_version) index, as does NoStream on a stream that
// exists. The look runs only for a stream's first event at an exact version
// (NoStream needs no look), and it is a max() on purpose: the generic plan
// of an EXISTS was made on a young table as a hashed subplan, a sequential
// scan of all of events on every record (7 ms a group after 4,600 events),
// while max() over (stream_id, stream_version) is always the index's last
// entry.
const appendKnownSQL = `
INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version,
                    payload, metadata, org_id, env_id, recorded_at)
SELECT i.event_id, i.stream_type, i.stream_id,
       CASE WHEN i.expected > 0 AND i.version = i.expected + 1
                 AND (SELECT coalesce(max(e.stream_version), 0) FROM events e WHERE e.stream_id = i.stream_id) <> i.expected
            THEN hookstream_version_conflict() ELSE i.version END,
       i.event_type, i.schema_version, i.payload, i.metadata, i.org_id, i.env_id, $12
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::int[],
            $8::jsonb[], $9::jsonb[], $10::text[], $11::text[]) WITH ORDINALITY
    AS i(event_id, stream_type, stream_id, expected, version, event_type, schema_version, payload, metadata, org_id, env_id, ord)
ORDER BY i.ord
RETURNING global_position, transaction_id::text::bigint, event_id, stream_version`

// AppendSQL and AppendKnownSQL are the statements appends run (exported
// for connection warm-up: see handlers.HotStatements).
const (
	AppendSQL      = appendSQL
	AppendKnownSQL = appendKnownSQL
)

// AppendMany appends to several streams in one statement: all or nothing.
// Each stream must be at its expected version, or the call returns
// ErrConcurrency; an event id that is already stored gives ErrDuplicateEvent.
// Run it on a transaction to combine it with other writes; the event INSERT
// should be the transaction's first write so its xid is taken late.
func (s *Store) AppendMany(ctx context.Context, q DBTX, appends ...StreamAppend) ([]Event, error) {
	query, args, out, err := s.prepare(appends)
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, query, args...)
	evs, err := readAppended(rows, err, out)
	if err != nil {
		recent.forget(out)
	}
	return evs, err
}

// QueueAppend queues AppendMany's statement on b (to send it in one round
// trip with other statements of a transaction) and returns the function
// that reads its result from b's results, in queue order. The read returns
// what AppendMany does; the caller must not commit after ErrConcurrency.
func (s *Store) QueueAppend(b *pgx.Batch, appends ...StreamAppend) (func(pgx.BatchResults) ([]Event, error), error) {
	query, args, out, err := s.prepare(appends)
	if err != nil {
		return nil, err
	}
	b.Queue(query, args...)
	return func(br pgx.BatchResults) ([]Event, error) {
		rows, err := br.Query()
		evs, err := readAppended(rows, err, out)
		if err != nil {
			recent.forget(out)
		}
		return evs, err
	}, nil
}

// prepare validates appends and picks the append statement (appendKnownSQL
// when every append expects a version, else appendSQL), its arguments and
// the events it will store (positions filled in by readAppended).
func (s *Store) prepare(appends []StreamAppend) (string, []any, []Event, error) {
	n := 0
	known := true               // every append expects a version: versions are computed here
	var expects map[string]bool // per stream seen: whether an append to it expects a version
	for _, a := range appends {
		if a.StreamID == "" || a.StreamType == "" || len(a.Events) == 0 {
			return "", nil, nil, fmt.Errorf("%w: stream %q needs a type, an id and at least one event", ErrInvalid, a.StreamID)
		}
		n += len(a.Events)
		known = known && a.Expected >= 0
		// One stream twice in one call, at an expected version: the
		// statement would number the second after the first, so two writers
		// that decided from the same version (two batches recorded in one
		// group that both held the same delivery, say) would both be
		// stored. Only one of them is at its version: refuse the call.
		if len(appends) > 1 {
			if expects == nil {
				expects = make(map[string]bool, len(appends))
			}
			before, seen := expects[a.StreamID]
			if seen && (before || a.Expected != AnyVersion) {
				return "", nil, nil, fmt.Errorf("%w: stream %q appended twice in one call", ErrConcurrency, a.StreamID)
			}
			expects[a.StreamID] = a.Expected != AnyVersion
		}
	}
	var (
		ids       = make([]pgtype.UUID, 0, n) // pgx encodes these without uuid.UUID's text round trip (driver.Valuer)
		types     = make([]string, 0, n)
		streamIDs = make([]string, 0, n)
		expected  = make([]int64, 0, n)
		versions  []int64 // appendKnownSQL's
		evTypes   = make([]string, 0, n)
		schemas   = make([]int32, 0, n)
		payloads  = make([]string, 0, n)
		metas     = make([]string, 0, n)
		orgs      = make([]string, 0, n)
		envs      = make([]string, 0, n)
		out       = make([]Event, 0, n)
		projected []any // NewEvent.Projected, by out's index
	)
	if known {
		versions = make([]int64, 0, n)
	}
	now := s.now().UTC()
	for _, a := range appends {
		for k, ev := range a.Events {
			if ev.Type == "" {
				return "", nil, nil, fmt.Errorf("%w: event without a type in stream %q", ErrInvalid, a.StreamID)
			}
			if known {
				versions = append(versions, a.Expected+int64(k)+1)
			}
			id := ev.ID
			if id == uuid.Nil {
				id = uuid.Must(uuid.NewV7())
			}
			sv := ev.SchemaVersion
			if sv == 0 {
				sv = 1
			}
			payload, err := marshalPayload(ev.Payload)
			if err != nil {
				return "", nil, nil, fmt.Errorf("marshal %s payload: %w", ev.Type, err)
			}
			meta, err := json.Marshal(ev.Metadata)
			if err != nil {
				return "", nil, nil, fmt.Errorf("marshal metadata: %w", err)
			}
			ids = append(ids, pgtype.UUID{Bytes: id, Valid: true})
			types = append(types, a.StreamType)
			streamIDs = append(streamIDs, a.StreamID)
			expected = append(expected, a.Expected)
			evTypes = append(evTypes, ev.Type)
			schemas = append(schemas, int32(sv))
			payloads = append(payloads, string(payload))
			metas = append(metas, string(meta))
			orgs = append(orgs, a.OrgID)
			envs = append(envs, a.EnvID)
			out = append(out, Event{
				EventID: id, StreamType: a.StreamType, StreamID: a.StreamID, Type: ev.Type, SchemaVersion: sv,
				Payload: payload, Metadata: ev.Metadata, OrgID: a.OrgID, EnvID: a.EnvID, RecordedAt: now,
			})
			projected = append(projected, ev.Projected)
		}
	}
	for i := range out { // once the call is valid: a failed append forgets them (recent.go)
		recent.put(out[i].EventID, projected[i], out[i].Payload)
	}
	if known {
		return appendKnownSQL, []any{ids, types, streamIDs, expected, versions, evTypes, schemas, payloads, metas, orgs, envs, now}, out, nil
	}
	return appendSQL, []any{ids, types, streamIDs, expected, evTypes, schemas, payloads, metas, orgs, envs, now}, out, nil
}

// readAppended fills out's positions from the append statement's rows.
func readAppended(rows pgx.Rows, err error, out []Event) ([]Event, error) {
	if err != nil {
		return nil, translate(err)
	}
	n := len(out)
	byID := make(map[uuid.UUID]int, n)
	for i, e := range out {
		byID[e.EventID] = i
	}
	got := 0
	for rows.Next() {
		var pos, txid, ver int64
		var id pgtype.UUID
		if err := rows.Scan(&pos, &txid, &id, &ver); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan appended event: %w", err)
		}
		e := &out[byID[id.Bytes]]
		e.GlobalPosition, e.TransactionID, e.StreamVersion = pos, uint64(txid), ver
		got++
	}
	if err := rows.Err(); err != nil {
		return nil, translate(err)
	}
	if got != n {
		return nil, ErrConcurrency
	}
	return out, nil
}

func marshalPayload(p any) (json.RawMessage, error) {
	switch v := p.(type) {
	case nil:
		return json.RawMessage("{}"), nil
	case json.RawMessage:
		if !json.Valid(v) {
			return nil, errors.New("payload is not valid JSON")
		}
		return v, nil
	default:
		return json.Marshal(v)
	}
}

// translate maps driver errors to the store's vocabulary.
func translate(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "HS409" {
		return ErrConcurrency // a stream moved past the expected version (migration 0008)
	}
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		switch pgErr.ConstraintName {
		case "events_stream_version_key":
			return ErrConcurrency
		case "events_event_id_key":
			return ErrDuplicateEvent
		}
	}
	return fmt.Errorf("append events: %w", err)
}

const selectColumns = `global_position, transaction_id::text::bigint, event_id, stream_type, stream_id, stream_version,
	event_type, schema_version, payload, metadata, org_id, env_id, recorded_at`

// selectColumnsWithoutMetadata is selectColumns with an empty metadata.
const selectColumnsWithoutMetadata = `global_position, transaction_id::text::bigint, event_id, stream_type, stream_id, stream_version,
	event_type, schema_version, payload, NULL::jsonb, org_id, env_id, recorded_at`

// The select columns with each EventReceived's ReceivedPayloadFields left
// out of its payload (RangeQuery.WithoutBodies).
var (
	payloadWithoutBodies = `CASE WHEN event_type = 'EventReceived' THEN payload - '{` + strings.Join(ReceivedPayloadFields, ",") +
		`}'::text[] ELSE payload END`
	selectColumnsWithoutBodies           = strings.Replace(selectColumns, " payload,", " "+payloadWithoutBodies+",", 1)
	selectColumnsWithoutMetadataOrBodies = strings.Replace(selectColumnsWithoutMetadata, " payload,", " "+payloadWithoutBodies+",", 1)
	// and with no payload at all (ReadFolded)
	selectColumnsWithoutPayload           = strings.Replace(selectColumns, " payload,", " NULL::jsonb,", 1)
	selectColumnsWithoutMetadataOrPayload = strings.Replace(selectColumnsWithoutMetadata, " payload,", " NULL::jsonb,", 1)
)

func scanEvent(row pgx.Row) (Event, error) {
	var e Event
	var txid int64
	var payload, meta []byte
	// Into []byte, not json.RawMessage: pgx would unmarshal into the
	// RawMessage, validating every payload PostgreSQL already validated.
	err := row.Scan(&e.GlobalPosition, &txid, &e.EventID, &e.StreamType, &e.StreamID, &e.StreamVersion,
		&e.Type, &e.SchemaVersion, &payload, &meta, &e.OrgID, &e.EnvID, &e.RecordedAt)
	if err != nil {
		return e, err
	}
	e.Payload = payload
	e.TransactionID = uint64(txid)
	if len(meta) > 0 {
		if err := json.Unmarshal(meta, &e.Metadata); err != nil {
			return e, fmt.Errorf("decode metadata of event %s: %w", e.EventID, err)
		}
	}
	return e, nil
}

func collect(rows pgx.Rows, err error) ([]Event, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Load returns a stream's events in version order (none for an unknown stream).
func (s *Store) Load(ctx context.Context, q DBTX, streamID string) ([]Event, error) {
	evs, err := collect(q.Query(ctx, `SELECT `+selectColumns+` FROM events WHERE stream_id = $1 ORDER BY stream_version`, streamID))
	if err != nil {
		return nil, fmt.Errorf("load stream %s: %w", streamID, err)
	}
	return evs, nil
}

// LoadMany returns the events of several streams, each in version order.
func (s *Store) LoadMany(ctx context.Context, q DBTX, streamIDs []string) (map[string][]Event, error) {
	return byStream(collect(q.Query(ctx, `SELECT `+selectColumns+` FROM events WHERE stream_id = ANY($1) ORDER BY stream_id, stream_version`, streamIDs)))
}

// byStream groups events (in stream and version order) by stream.
func byStream(evs []Event, err error) (map[string][]Event, error) {
	if err != nil {
		return nil, fmt.Errorf("load streams: %w", err)
	}
	out := map[string][]Event{}
	for _, e := range evs {
		out[e.StreamID] = append(out[e.StreamID], e)
	}
	return out, nil
}

// QueueLoadMany queues a LoadMany of the streams' events without their
// metadata on b (to share a round trip with other reads) and returns the
// function that reads its result from b's results, in queue order.
func (s *Store) QueueLoadMany(b *pgx.Batch, streamIDs []string) func(pgx.BatchResults) (map[string][]Event, error) {
	b.Queue(`SELECT `+selectColumnsWithoutMetadata+` FROM events WHERE stream_id = ANY($1) ORDER BY stream_id, stream_version`, streamIDs)
	return func(br pgx.BatchResults) (map[string][]Event, error) {
		return byStream(collect(br.Query()))
	}
}

// ReadAll returns up to limit events after the cursor, in commit order. Only
// events of transactions older than every transaction still in progress are
// returned, so a reader that checkpoints the last Position never skips an
// event that commits later with a smaller position.
func (s *Store) ReadAll(ctx context.Context, q DBTX, after Position, limit int) ([]Event, error) {
	return ReadRange(ctx, q, RangeQuery{After: after, Limit: limit, UntilTx: -1})
}

// RangeQuery selects events for ReadRange.
type RangeQuery struct {
	After    Position // strictly after this cursor
	Types    []string // only these event types (all when empty)
	StreamID string   // only this stream (all when empty)
	// UntilTx/UntilPos: not after this cursor; UntilTx < 0 means no bound.
	UntilTx  int64
	UntilPos int64
	Limit    int
	// WithoutMetadata leaves Metadata empty (a consumer that does not use
	// it skips decoding it).
	WithoutMetadata bool
	// WithoutBodies returns each EventReceived without the webhook's body,
	// headers and query (ReceivedPayloadFields): a reader that keeps none of
	// them (the read models) does not pull every body through the wire and
	// its JSON decoder. Other events are whole.
	WithoutBodies bool
	// withoutPayloads reads no payload at all (ReadFolded reads the ones
	// it needs after).
	withoutPayloads bool
}

// ReceivedPayloadFields are the EventReceived fields WithoutBodies leaves
// out: the webhook as it was sent, up to the ingest body limit.
var ReceivedPayloadFields = []string{"body_b64", "headers", "headers_b64", "query", "raw_query", "raw_query_b64"}

// ReadRange returns up to q.Limit events after q.After in commit order,
// below the commit-safe horizon (as ReadAll), filtered by q.
// The ORDER BY names the table's columns: a bare transaction_id is the
// output column of that name (the bigint cast), which no index is ordered
// by, so PostgreSQL read and sorted every event after the position (the
// projector's read sorted 1,000–1,800 whole rows a call at saturation).
func ReadRange(ctx context.Context, db DBTX, q RangeQuery) ([]Event, error) {
	types := q.Types
	if types == nil {
		types = []string{}
	}
	cols := selectColumns
	if q.WithoutMetadata {
		cols = selectColumnsWithoutMetadata
	}
	switch {
	case q.withoutPayloads:
		cols = selectColumnsWithoutPayload
		if q.WithoutMetadata {
			cols = selectColumnsWithoutMetadataOrPayload
		}
	case q.WithoutBodies:
		cols = selectColumnsWithoutBodies
		if q.WithoutMetadata {
			cols = selectColumnsWithoutMetadataOrBodies
		}
	}
	evs, err := collect(db.Query(ctx, `SELECT `+cols+` FROM events
		WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
		  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		  AND (cardinality($4::text[]) = 0 OR event_type = ANY($4))
		  AND ($5 = '' OR stream_id = $5)
		  AND ($6::bigint < 0 OR (transaction_id, global_position) <= ($6::bigint::text::xid8, $7))
		ORDER BY events.transaction_id, events.global_position
		LIMIT $3`, strconv.FormatUint(q.After.TransactionID, 10), q.After.GlobalPosition, q.Limit, types, q.StreamID, q.UntilTx, q.UntilPos))
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return evs, nil
}

// ReadFolded is ReadRange for a reader in this process that folds the
// events (the projector): the payloads this process appended come as the
// appenders' values (Event.Decoded, recent.go) and are not read from the
// table; of the others, those whose type need names are read in a second
// statement (by position, in the same transaction), and the rest come
// without a payload. Saturated, the projector's read returned about 4 KB
// of JSON per webhook that the engine had encoded itself.
func ReadFolded(ctx context.Context, db DBTX, q RangeQuery, need func(eventType string) bool) ([]Event, error) {
	q.withoutPayloads = true
	evs, err := ReadRange(ctx, db, q)
	if err != nil || len(evs) == 0 {
		return evs, err
	}
	recent.attach(evs)
	var missing []int64
	at := map[int64]int{}
	for i, e := range evs {
		if e.Decoded == nil && need(e.Type) {
			missing = append(missing, e.GlobalPosition)
			at[e.GlobalPosition] = i
		}
	}
	if len(missing) == 0 {
		return evs, nil
	}
	payload := "payload"
	if q.WithoutBodies {
		payload = payloadWithoutBodies
	}
	rows, err := db.Query(ctx, `SELECT global_position, `+payload+` FROM events WHERE global_position = ANY($1)`, missing)
	if err != nil {
		return nil, fmt.Errorf("read payloads: %w", err)
	}
	defer rows.Close()
	got := 0
	for rows.Next() {
		var pos int64
		var p []byte
		if err := rows.Scan(&pos, &p); err != nil {
			return nil, fmt.Errorf("read payloads: %w", err)
		}
		evs[at[pos]].Payload = p
		got++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read payloads: %w", err)
	}
	if got != len(missing) {
		return nil, fmt.Errorf("read payloads: %d of %d events found", got, len(missing))
	}
	return evs, nil
}
