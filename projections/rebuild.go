package projections

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// GroupScheduler is the scheduler's consumer group (it keeps delivery_jobs in
// step with the delivery streams). Persisted name.
const GroupScheduler = "scheduler"

// JobsChannel is the NOTIFY channel that wakes dispatchers when jobs become
// due now (handlers/jobs.Channel).
const JobsChannel = "hookstream_jobs"

// ProjectedChannel is the NOTIFY channel the projector signals when a batch
// it committed projected delivery attempts: a retry waiting for its
// attempt's outcome (POST /v1/delivery-attempts/{id}/retry) wakes on it.
const ProjectedChannel = "hookstream_projected"

// SchedulerEvents are the event types the scheduler reads.
var SchedulerEvents = []string{domain.EvDeliveryRequested, domain.EvRetryScheduled, domain.EvRetryRequested, domain.EvDeliveryAttempted, domain.EvMovedToDLQ}

// SchedulerLiveEvents are the types the scheduler's consumer group reads
// while the engine runs (see jobs.LiveScheduleEvents); its read is a range
// scan of the partial index events_scheduler_live_idx, whose predicate lists
// them.
var SchedulerLiveEvents = []string{domain.EvRetryRequested}

// Group is a consumer group that maintains state from the log.
type Group struct {
	Name  string
	Types []string
}

// Groups are every consumer group the engine runs, in the order it starts them.
var Groups = []Group{
	{GroupScheduler, SchedulerLiveEvents},
	{GroupDeliveryAttempts, DeliveryAttemptsEvents},
	{GroupEvents, EventsEvents},
}

// Progress is a rebuild's progress: Phase is "read", "index", "catch-up" or
// "swap"; Done and Total count events for read and catch-up.
type Progress struct {
	Phase       string
	Done, Total int64
}

// RebuildOptions tune Rebuild.
type RebuildOptions struct {
	// Progress, when set, is called as the rebuild advances.
	Progress func(Progress)
	// EventAtATime rebuilds by running every event through the live
	// projection function instead of set-based SQL: the reference the
	// set-based path is tested against, and the slow path.
	EventAtATime bool
	// Chunk is how many log positions one read step covers (default 50,000).
	Chunk int64
}

// RebuildResult describes a finished rebuild.
type RebuildResult struct {
	Name     string        `json:"name"`
	Events   int64         `json:"events"`    // events read to build
	Rows     int64         `json:"rows"`      // rows of the main table after the swap
	CaughtUp int64         `json:"caught_up"` // events applied one at a time after the build
	Repaired int64         `json:"repaired"`  // scheduler: job rows that were missing or behind the log
	Duration time.Duration `json:"duration_ns"`
}

// Rebuildable lists the read models Rebuild knows, in --all order.
func Rebuildable() []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.name
	}
	return out
}

// ErrUnknownProjection is returned for a name Rebuildable does not list.
var ErrUnknownProjection = errors.New("unknown projection")

// ErrRebuildRunning is returned while another rebuild of the same read model runs.
var ErrRebuildRunning = errors.New("a rebuild of this projection is already running")

// RetentionLockKey is the advisory lock the retention pass holds while it
// runs (handlers/retention), and a rebuild of the attempts read model for
// its whole run.
const RetentionLockKey = `hashtext('hookstream:retention')`

// shadowSchema holds the tables being built before they are swapped in.
const shadowSchema = "hookstream_rebuild"

// stage extracts typed rows from one event type into a temp table, chunk by
// chunk ($1, $2: position range; $3: the build's transaction bound; $4: true
// for the events below it, false for those after).
type stage struct {
	table, columns, insert string
}

type rebuildMode int

const (
	modeSwap   rebuildMode = iota // build beside the live tables, catch up, swap under the group's offset lock
	modeMerge                     // scheduler: upsert rows the log shows missing or behind; nothing moves backwards
	modeLocked                    // small table: rebuild and replace in one transaction under a table lock
)

type spec struct {
	name   string
	group  string
	types  []string
	tables []string // tables the projection owns; the first is the one counted
	stages []stage
	fill   []string // set-based statements from the stages into the (shadow) tables
	apply  func(eventstore.Event) ([]eventstore.Statement, error)
	mode   rebuildMode
}

// whereChunk selects one event type's rows in a chunk, committed before the build began.
const whereChunk = ` FROM events e WHERE e.event_type = '%s' AND e.global_position BETWEEN $1 AND $2 AND (e.transaction_id < $3::text::xid8) = $4`

func sel(eventType, cols string) string { return `SELECT ` + cols + fmt.Sprintf(whereChunk, eventType) }

var specs = []spec{
	{
		name: "delivery_attempts", group: GroupDeliveryAttempts, types: DeliveryAttemptsEvents,
		tables: []string{"delivery_attempts", "projected_deliveries"}, apply: DeliveryAttempts, mode: modeSwap,
		stages: []stage{
			{"rb_req", `tx xid8, pos bigint, org_id text, env_id text, delivery_id text, event_id text, connection_id text, destination_id text,
				connection_name text, destination_name text, replay_id text, attempt_id text, trigger_type text, request_url text,
				request_method text, requested_at timestamptz`,
				sel(domain.EvDeliveryRequested, `e.transaction_id, e.global_position, e.org_id, e.env_id, e.payload->>'delivery_id', e.payload->>'event_id',
				e.payload->>'connection_id', e.payload->>'destination_id', e.payload->>'connection_name', e.payload->>'destination_name',
				NULLIF(e.payload->>'replay_id', ''), e.payload->>'attempt_id', e.payload->>'trigger_type', e.payload->>'request_url',
				e.payload->>'request_method', hs_ts(e.payload->>'requested_at')`)},
			{"rb_retryreq", `org_id text, env_id text, delivery_id text, attempt_id text, attempt_number int, request_url text, request_method text, requested_at timestamptz`,
				sel(domain.EvRetryRequested, `e.org_id, e.env_id, e.stream_id, e.payload->>'attempt_id', (e.payload->>'attempt_number')::int,
				e.payload->>'request_url', e.payload->>'request_method', hs_ts(e.payload->>'requested_at')`)},
			{"rb_att", `org_id text, env_id text, delivery_id text, attempt_id text, request_url text, request_method text, attempted_pos bigint,
				request_body_size int, response_status int, duration_ms int, status text, error text,
				started_at timestamptz, attempt_number int, trigger_type text`,
				sel(domain.EvDeliveryAttempted, `e.org_id, e.env_id, e.stream_id, e.payload->>'attempt_id', e.payload->>'request_url', e.payload->>'request_method',
				e.global_position, (e.payload->>'request_body_size')::int, (e.payload->>'response_status')::int,
				(e.payload->>'duration_ms')::int, e.payload->>'status', e.payload->>'error', hs_ts(e.payload->>'started_at'),
				(e.payload->>'attempt_number')::int, e.payload->>'trigger_type'`)},
			{"rb_sched", `after_attempt_id text, not_before timestamptz`,
				sel(domain.EvRetryScheduled, `e.payload->>'after_attempt_id', hs_ts(e.payload->>'not_before')`)},
			{"rb_dlq", `attempt_id text, dlq_at timestamptz`,
				sel(domain.EvMovedToDLQ, `e.payload->>'attempt_id', hs_ts(e.payload->>'dlq_at')`)},
			{"rb_names", `kind text, id text, name text, tx xid8, pos bigint`,
				sel(domain.EvDestinationCreated, `'d', e.payload->>'id', coalesce(e.payload->>'name', ''), e.transaction_id, e.global_position`)},
			{"rb_names", ``, sel(domain.EvDestinationUpdated, `'d', e.payload->>'id', coalesce(e.payload->>'name', ''), e.transaction_id, e.global_position`)},
			{"rb_names", ``, sel(domain.EvConnectionCreated, `'c', e.payload->>'id', coalesce(e.payload->>'name', ''), e.transaction_id, e.global_position`)},
			{"rb_names", ``, sel(domain.EvConnectionUpdated, `'c', e.payload->>'id', coalesce(e.payload->>'name', ''), e.transaction_id, e.global_position`)},
		},
		fill: []string{
			// A delivery shows the name of the last rename after it was
			// requested, else the name it was requested with.
			`INSERT INTO projected_deliveries (delivery_id, event_id, connection_id, destination_id, connection_name, destination_name, replay_id)
			SELECT DISTINCT ON (r.delivery_id) r.delivery_id, r.event_id, r.connection_id, r.destination_id,
				CASE WHEN (c.tx, c.pos) > (r.tx, r.pos) THEN c.name ELSE r.connection_name END,
				CASE WHEN (d.tx, d.pos) > (r.tx, r.pos) THEN d.name ELSE r.destination_name END,
				r.replay_id
			FROM rb_req r
			LEFT JOIN (SELECT DISTINCT ON (id) id, name, tx, pos FROM rb_names WHERE kind = 'c' ORDER BY id, tx DESC, pos DESC) c ON c.id = r.connection_id
			LEFT JOIN (SELECT DISTINCT ON (id) id, name, tx, pos FROM rb_names WHERE kind = 'd' ORDER BY id, tx DESC, pos DESC) d ON d.id = r.destination_id
			ORDER BY r.delivery_id, r.tx, r.pos`,
			// Pending rows (initial, replay and manual attempts) merged with
			// what each attempt recorded; automatic retries have no pending row.
			`WITH pend AS (
				SELECT attempt_id AS id, org_id, env_id, delivery_id, request_url, request_method, requested_at, 1 AS attempt_number, trigger_type FROM rb_req
				UNION ALL
				SELECT attempt_id, org_id, env_id, delivery_id, request_url, request_method, requested_at, attempt_number, 'manual' FROM rb_retryreq
			)
			INSERT INTO delivery_attempts (id, org_id, env_id, delivery_id, event_id, connection_id, destination_id, request_url, request_method,
				attempted_pos, request_body_size, response_status, duration_ms, status, error, created_at,
				attempt_number, next_retry_at, is_dlq, dlq_at, trigger_type, connection_name, destination_name, replay_id)
			SELECT coalesce(p.id, a.attempt_id), coalesce(p.org_id, a.org_id), coalesce(p.env_id, a.env_id), d.delivery_id, d.event_id,
				d.connection_id, d.destination_id, coalesce(a.request_url, p.request_url), coalesce(a.request_method, p.request_method),
				a.attempted_pos, coalesce(a.request_body_size, 0), a.response_status, a.duration_ms,
				coalesce(a.status, 'pending'), a.error, coalesce(p.requested_at, a.started_at), coalesce(a.attempt_number, p.attempt_number),
				CASE WHEN q.attempt_id IS NULL THEN s.not_before END, CASE WHEN q.attempt_id IS NULL THEN 0 ELSE 1 END, q.dlq_at,
				coalesce(a.trigger_type, p.trigger_type), d.connection_name, d.destination_name, d.replay_id
			FROM pend p FULL JOIN rb_att a ON a.attempt_id = p.id
			JOIN projected_deliveries d ON d.delivery_id = coalesce(p.delivery_id, a.delivery_id)
			LEFT JOIN rb_sched s ON s.after_attempt_id = coalesce(p.id, a.attempt_id)
			LEFT JOIN rb_dlq q ON q.attempt_id = coalesce(p.id, a.attempt_id)`,
		},
	},
	{
		name: "events", group: GroupEvents, types: EventsEvents,
		tables: []string{"events_view", "event_delivery_outcomes"}, apply: Events, mode: modeSwap,
		stages: []stage{
			{"rb_received", `tx xid8, pos bigint, org_id text, env_id text, event_id text, source_id text, source_name text, source_slug text,
				method text, content_type text, source_ip text, payload_size int, deliveries int,
				received_at timestamptz, verification_status text, dedup_status text, dedup_hash text`,
				sel(domain.EvEventReceived, `e.transaction_id, e.global_position, e.org_id, e.env_id, e.payload->>'event_id', coalesce(e.payload->>'source_id', ''),
				coalesce(e.payload->>'source_name', ''), coalesce(e.payload->>'source_slug', ''), coalesce(e.payload->>'method', ''),
				NULLIF(e.payload->>'content_type', ''), NULLIF(e.payload->>'source_ip', ''), coalesce((e.payload->>'body_size')::int, 0),
				coalesce((e.payload->>'deliveries')::int, 0), hs_ts(e.payload->>'received_at'),
				coalesce(NULLIF(e.payload->>'verification_status', ''), 'none'), coalesce(NULLIF(e.payload->>'dedup_status', ''), 'unique'),
				NULLIF(e.payload->>'dedup_hash', '')`)},
			{"rb_outcome", `delivery_id text, event_id text, outcome text, version bigint`,
				sel(domain.EvDeliveryAttempted, `e.stream_id, e.payload->>'event_id', 'success', e.stream_version`) +
					` AND e.payload->>'status' = 'success' AND coalesce(e.payload->>'event_id', '') <> '' AND coalesce(e.payload->>'trigger_type', '') <> 'replay'`},
			{"rb_outcome", ``, sel(domain.EvMovedToDLQ, `e.stream_id, e.payload->>'event_id', 'dlq', e.stream_version`) +
				` AND coalesce(e.payload->>'event_id', '') <> ''`},
		},
		fill: []string{
			`INSERT INTO event_delivery_outcomes (delivery_id, event_id, outcome, version)
			SELECT DISTINCT ON (delivery_id) delivery_id, event_id, outcome, version FROM rb_outcome ORDER BY delivery_id, version DESC`,
			`INSERT INTO events_view (id, org_id, env_id, source_id, source_name, source_slug, method, content_type, source_ip,
				payload_size, status, delivery_count, received_at, verification_status, dedup_status, dedup_hash)
			SELECT r.event_id, r.org_id, r.env_id, r.source_id, r.source_name, r.source_slug, r.method, r.content_type, r.source_ip,
				r.payload_size,
				CASE WHEN o.event_id IS NULL THEN CASE WHEN r.deliveries > 0 THEN 'processing' ELSE 'received' END
					WHEN o.dlq > 0 THEN 'failed' WHEN o.success >= r.deliveries THEN 'delivered' ELSE 'processing' END,
				r.deliveries, r.received_at, r.verification_status, r.dedup_status, r.dedup_hash
			FROM (SELECT DISTINCT ON (event_id) * FROM rb_received ORDER BY event_id, tx, pos) r
			LEFT JOIN (SELECT event_id, count(*) FILTER (WHERE outcome = 'dlq') AS dlq, count(*) FILTER (WHERE outcome = 'success') AS success
				FROM event_delivery_outcomes GROUP BY event_id) o ON o.event_id = r.event_id`,
		},
	},
	{
		name: "scheduler", group: GroupScheduler, types: SchedulerEvents, tables: []string{"delivery_jobs"}, mode: modeMerge,
		stages: []stage{
			{"rb_jobev", `delivery_id text, org_id text, env_id text, type text, version bigint, event_id text, connection_id text,
				destination_id text, received_uuid text, attempt_id text, attempt_number int, trigger_type text, due_at timestamptz`,
				sel(domain.EvDeliveryRequested, `e.stream_id, e.org_id, e.env_id, e.event_type, e.stream_version, e.payload->>'event_id',
				e.payload->>'connection_id', e.payload->>'destination_id', e.payload->>'received_uuid', e.payload->>'attempt_id', 1,
				e.payload->>'trigger_type', hs_ts(e.payload->>'requested_at')`)},
			{"rb_jobev", ``, sel(domain.EvRetryScheduled, `e.stream_id, e.org_id, e.env_id, e.event_type, e.stream_version, NULL, NULL, NULL, NULL,
				e.payload->>'next_attempt_id', (e.payload->>'attempt_number')::int, 'retry', hs_ts(e.payload->>'not_before')`)},
			{"rb_jobev", ``, sel(domain.EvRetryRequested, `e.stream_id, e.org_id, e.env_id, e.event_type, e.stream_version, NULL, NULL, NULL, NULL,
				e.payload->>'attempt_id', (e.payload->>'attempt_number')::int, 'manual', hs_ts(e.payload->>'requested_at')`)},
			{"rb_jobev", ``, sel(domain.EvDeliveryAttempted, `e.stream_id, e.org_id, e.env_id, e.event_type, e.stream_version, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`)},
			{"rb_jobev", ``, sel(domain.EvMovedToDLQ, `e.stream_id, e.org_id, e.env_id, e.event_type, e.stream_version, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`)},
		},
		fill: []string{
			// Each delivery's job as its last event leaves it: scheduled for
			// the last planned attempt, or done after an attempt or the DLQ.
			`CREATE TEMP TABLE rb_jobs ON COMMIT DROP AS
			SELECT q.delivery_id, q.org_id, q.env_id, q.event_id, q.connection_id, q.destination_id, q.received_uuid::uuid AS received_uuid,
				CASE WHEN l.type IN ('DeliveryAttempted', 'MovedToDLQ') THEN 'done' ELSE 'scheduled' END AS state,
				CASE WHEN l.type IN ('DeliveryAttempted', 'MovedToDLQ') THEN NULL ELSE s.attempt_id END AS attempt_id,
				s.attempt_number, s.trigger_type, s.due_at, l.version
			FROM rb_jobev q
			JOIN (SELECT DISTINCT ON (delivery_id) delivery_id, type, version FROM rb_jobev ORDER BY delivery_id, version DESC) l USING (delivery_id)
			JOIN (SELECT DISTINCT ON (delivery_id) delivery_id, attempt_id, attempt_number, trigger_type, due_at FROM rb_jobev
				WHERE type IN ('DeliveryRequested', 'RetryScheduled', 'RetryRequested') ORDER BY delivery_id, version DESC) s USING (delivery_id)
			WHERE q.type = 'DeliveryRequested'`,
		},
	},
	{
		name: "replays", tables: []string{"replay_jobs"}, mode: modeLocked,
		types: []string{domain.EvReplayRequested, domain.EvReplayReleased, domain.EvReplayFailed, domain.EvReplayCancelled},
		stages: []stage{
			{"rb_replay", `replay_id text, org_id text, env_id text, type text, payload jsonb`,
				sel(domain.EvReplayRequested, `e.stream_id, e.org_id, e.env_id, e.event_type, e.payload`)},
			{"rb_replay", ``, sel(domain.EvReplayReleased, `e.stream_id, e.org_id, e.env_id, e.event_type, e.payload`)},
			{"rb_replay", ``, sel(domain.EvReplayFailed, `e.stream_id, e.org_id, e.env_id, e.event_type, e.payload`)},
			{"rb_replay", ``, sel(domain.EvReplayCancelled, `e.stream_id, e.org_id, e.env_id, e.event_type, e.payload`)},
		},
		fill: []string{
			`DELETE FROM replay_jobs`,
			`INSERT INTO replay_jobs (id, org_id, env_id, destination_id, source_id, connection_id, from_at, to_at, rate_limit, max_events,
				status, error, total, released, skipped, created_at, failed_at, cancelled_at, next_batch_at)
			SELECT r.replay_id, r.org_id, r.env_id, r.payload->>'destination_id', NULLIF(r.payload->>'source_id', ''),
				NULLIF(r.payload->>'connection_id', ''), hs_ts(r.payload->>'from'), hs_ts(r.payload->>'to'), (r.payload->>'rate_limit')::int,
				(r.payload->>'max_events')::int,
				CASE WHEN f.replay_id IS NOT NULL THEN 'failed' WHEN c.replay_id IS NOT NULL THEN 'cancelled' ELSE 'running' END, f.payload->>'reason',
				jsonb_array_length(r.payload->'event_ids'), coalesce(rel.released, 0), coalesce(rel.skipped, 0), hs_ts(r.payload->>'requested_at'), hs_ts(f.payload->>'failed_at'),
				hs_ts(c.payload->>'cancelled_at'), coalesce(rel.last_at + interval '1 second', hs_ts(r.payload->>'requested_at'))
			FROM rb_replay r
			LEFT JOIN (SELECT replay_id, max((payload->>'offset')::int + (payload->>'count')::int) AS released,
				max(hs_ts(payload->>'released_at')) AS last_at,
				sum((payload->>'count')::int - CASE jsonb_typeof(payload->'delivery_ids') WHEN 'array' THEN jsonb_array_length(payload->'delivery_ids') ELSE 0 END) AS skipped
				FROM rb_replay
				WHERE type = 'ReplayReleased' GROUP BY replay_id) rel ON rel.replay_id = r.replay_id
			LEFT JOIN (SELECT DISTINCT ON (replay_id) replay_id, payload FROM rb_replay WHERE type = 'ReplayFailed') f ON f.replay_id = r.replay_id
			LEFT JOIN (SELECT DISTINCT ON (replay_id) replay_id, payload FROM rb_replay WHERE type = 'ReplayCancelled') c ON c.replay_id = r.replay_id
			WHERE r.type = 'ReplayRequested'`,
		},
	},
}

func findSpec(name string) (spec, bool) {
	for _, s := range specs {
		if s.name == name {
			return s, true
		}
	}
	return spec{}, false
}

// Rebuild rebuilds one read model from the events alone while the engine
// keeps running:
//   - delivery_attempts and events are built beside the live tables (schema
//     hookstream_rebuild), with set-based SQL over typed extracts of the log,
//     caught up event by event, then swapped in one short transaction that
//     holds the projector's offset row (so the projector pauses for it): the
//     API reads either the old table or the complete new one.
//   - scheduler: the jobs the log implies are upserted where the live row is
//     missing or at an older stream version. Rows never move backwards, so
//     nothing already sent is sent again, and in-flight leases are kept.
//   - replays: rebuilt and replaced in one transaction.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, name string, opt RebuildOptions) (RebuildResult, error) {
	sp, ok := findSpec(name)
	if !ok {
		return RebuildResult{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownProjection, name, strings.Join(Rebuildable(), ", "))
	}
	if opt.Chunk <= 0 {
		opt.Chunk = 50_000
	}
	if opt.Progress == nil {
		opt.Progress = func(Progress) {}
	}
	if opt.EventAtATime && sp.apply == nil {
		return RebuildResult{}, fmt.Errorf("projection %s has no event-at-a-time path", name)
	}
	started := time.Now()
	// A connection of its own: session temp tables, search_path changes, and
	// no cached statements that could outlive a table swap.
	cfg := pool.Config().ConnConfig.Copy()
	cfg.DefaultQueryExecMode = pgx.QueryExecModeDescribeExec
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild %s: connect: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('hookstream.rebuild.' || $1))`, name).Scan(&locked); err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild %s: lock: %w", name, err)
	}
	if !locked {
		return RebuildResult{}, fmt.Errorf("rebuild %s: %w", name, ErrRebuildRunning)
	}
	// Unlocked explicitly: a closed connection's backend may hold it a moment longer.
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('hookstream.rebuild.' || $1))`, name) //nolint:errcheck // the session ends next
	if slices.Contains(sp.tables, "delivery_attempts") || slices.Contains(sp.tables, "events_view") {
		// No retention pass meanwhile: a history pass removes whole
		// webhooks, in the log and the live tables, and the build would
		// swap in rows read before it. (A pass waits for the build; the
		// build for a pass.)
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(`+RetentionLockKey+`)`); err != nil {
			return RebuildResult{}, fmt.Errorf("rebuild %s: retention lock: %w", name, err)
		}
		defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(`+RetentionLockKey+`)`) //nolint:errcheck // the session ends next
	}
	r := &rebuilder{conn: conn, sp: sp, opt: opt, res: RebuildResult{Name: name}}
	switch sp.mode {
	case modeSwap:
		err = r.swap(ctx)
	case modeMerge:
		err = r.merge(ctx)
	case modeLocked:
		err = r.locked(ctx)
	}
	r.res.Duration = time.Since(started)
	if err != nil {
		return r.res, fmt.Errorf("rebuild %s: %w", name, err)
	}
	return r.res, nil
}

type rebuilder struct {
	conn *pgx.Conn
	sp   spec
	opt  RebuildOptions
	res  RebuildResult
	// bound: the build read every event of a transaction older than xmin;
	// cursor: the last event applied to the shadow tables, in commit order.
	xmin   uint64
	cursor eventstore.Position
}

func (r *rebuilder) exec(ctx context.Context, sql string, args ...any) (int64, error) {
	tag, err := r.conn.Exec(ctx, sql, args...)
	if err != nil {
		short := strings.Join(strings.Fields(sql), " ")
		if len(short) > 80 {
			short = short[:80] + "…"
		}
		return 0, fmt.Errorf("%s: %w", short, err)
	}
	return tag.RowsAffected(), nil
}

// begin fixes the build's bound: every transaction older than the oldest
// still running has committed (or never will), so "transaction_id < xmin"
// is a complete, stable set of events and the cursor is its last one.
func (r *rebuilder) begin(ctx context.Context) error {
	if err := r.conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint`).Scan(&r.xmin); err != nil {
		return err
	}
	var tx int64
	err := r.conn.QueryRow(ctx, `SELECT transaction_id::text::bigint, global_position FROM events
		WHERE transaction_id < $1::text::xid8 ORDER BY transaction_id DESC, global_position DESC LIMIT 1`,
		strconv.FormatUint(r.xmin, 10)).Scan(&tx, &r.cursor.GlobalPosition)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	r.cursor.TransactionID = uint64(tx)
	return err
}

// shadowTables creates empty copies of the projection's tables (columns,
// defaults and checks; indexes come after the bulk load).
func (r *rebuilder) shadowTables(ctx context.Context) error {
	if _, err := r.exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+shadowSchema); err != nil {
		return err
	}
	for _, t := range r.sp.tables {
		if _, err := r.exec(ctx, `DROP TABLE IF EXISTS `+shadowSchema+`.`+t); err != nil {
			return err
		}
		if _, err := r.exec(ctx, `CREATE TABLE `+shadowSchema+`.`+t+` (LIKE public.`+t+` INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`); err != nil {
			return err
		}
	}
	return nil
}

// shadowIndexes gives the shadow tables the live tables' indexes, names and
// primary keys, so after the swap they are indistinguishable.
func (r *rebuilder) shadowIndexes(ctx context.Context) error {
	r.opt.Progress(Progress{Phase: "index"})
	for _, t := range r.sp.tables {
		rows, err := r.conn.Query(ctx, `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1`, t)
		if err != nil {
			return err
		}
		defs := map[string]string{}
		for rows.Next() {
			var name, def string
			if err := rows.Scan(&name, &def); err != nil {
				rows.Close()
				return err
			}
			defs[name] = def
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, def := range defs {
			def = strings.Replace(def, " ON public."+t+" ", " ON "+shadowSchema+"."+t+" ", 1)
			if _, err := r.exec(ctx, def); err != nil {
				return err
			}
		}
		rows, err = r.conn.Query(ctx, `SELECT conname, contype FROM pg_constraint WHERE conrelid = ('public.' || $1)::regclass AND contype IN ('p', 'u')`, t)
		if err != nil {
			return err
		}
		type con struct{ name, typ string }
		var cons []con
		for rows.Next() {
			var c con
			if err := rows.Scan(&c.name, &c.typ); err != nil {
				rows.Close()
				return err
			}
			cons = append(cons, c)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, c := range cons {
			kind := "PRIMARY KEY"
			if c.typ == "u" {
				kind = "UNIQUE"
			}
			if _, err := r.exec(ctx, `ALTER TABLE `+shadowSchema+`.`+t+` ADD CONSTRAINT `+c.name+` `+kind+` USING INDEX `+c.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// read extracts the events below the bound into the stage tables, one
// short statement per event type and chunk (no long transaction pins the
// consumer groups' horizon).
func (r *rebuilder) read(ctx context.Context) error {
	created := map[string]bool{}
	for _, st := range r.sp.stages {
		if created[st.table] {
			continue
		}
		created[st.table] = true
		if _, err := r.exec(ctx, `DROP TABLE IF EXISTS pg_temp.`+st.table); err != nil {
			return err
		}
		if _, err := r.exec(ctx, `CREATE TEMP TABLE `+st.table+` (`+st.columns+`)`); err != nil {
			return err
		}
	}
	if r.cursor.GlobalPosition == 0 {
		return nil
	}
	var lo, hi, total int64
	if err := r.conn.QueryRow(ctx, `SELECT coalesce(min(global_position), 0), coalesce(max(global_position), 0) FROM events`).Scan(&lo, &hi); err != nil {
		return err
	}
	if err := r.conn.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = ANY($1) AND transaction_id < $2::text::xid8`,
		r.sp.types, strconv.FormatUint(r.xmin, 10)).Scan(&total); err != nil {
		return err
	}
	r.opt.Progress(Progress{Phase: "read", Total: total})
	for from := lo; from <= hi; from += r.opt.Chunk {
		to := min(hi, from+r.opt.Chunk-1)
		for _, st := range r.sp.stages {
			n, err := r.exec(ctx, `INSERT INTO `+st.table+` `+st.insert, from, to, strconv.FormatUint(r.xmin, 10), true)
			if err != nil {
				return err
			}
			r.res.Events += n
		}
		r.opt.Progress(Progress{Phase: "read", Done: min(r.res.Events, total), Total: total})
	}
	for table := range created {
		if _, err := r.exec(ctx, `ANALYZE `+table); err != nil {
			return err
		}
	}
	return nil
}

// readTail adds the events of transactions at or after the bound that have
// committed by now to the stage tables.
func (r *rebuilder) readTail(ctx context.Context) error {
	var lo, hi *int64
	if err := r.conn.QueryRow(ctx, `SELECT min(global_position), max(global_position) FROM events WHERE transaction_id >= $1::text::xid8`,
		strconv.FormatUint(r.xmin, 10)).Scan(&lo, &hi); err != nil || lo == nil {
		return err
	}
	for _, st := range r.sp.stages {
		n, err := r.exec(ctx, `INSERT INTO `+st.table+` `+st.insert, *lo, *hi, strconv.FormatUint(r.xmin, 10), false)
		if err != nil {
			return err
		}
		r.res.CaughtUp += n
	}
	return nil
}

// readEvents returns up to limit events of the projection's types after
// the cursor in commit order, below the commit-safe horizon and, when until
// is set, not after it.
func (r *rebuilder) readEvents(ctx context.Context, q eventstore.DBTX, until *eventstore.Position, limit int) ([]eventstore.Event, error) {
	untilTx, untilPos := int64(-1), int64(0)
	if until != nil {
		untilTx, untilPos = int64(until.TransactionID), until.GlobalPosition
	}
	return eventstore.ReadRange(ctx, q, eventstore.RangeQuery{After: r.cursor, Types: r.sp.types, Limit: limit, UntilTx: untilTx, UntilPos: untilPos})
}

// applyEvents runs events through the live projection function against the
// shadow tables (search_path puts them first).
func (r *rebuilder) applyEvents(ctx context.Context, q eventstore.DBTX, evs []eventstore.Event) error {
	for _, ev := range evs {
		stmts, err := r.sp.apply(ev)
		if err != nil {
			return err
		}
		for _, st := range stmts {
			if _, err := q.Exec(ctx, st.SQL, st.Args...); err != nil {
				return fmt.Errorf("apply %s %s: %w", ev.Type, ev.EventID, err)
			}
		}
		r.cursor = ev.Position()
	}
	return nil
}

// catchUp applies the events committed since the build until few remain.
func (r *rebuilder) catchUp(ctx context.Context, all bool) error {
	for {
		evs, err := r.readEvents(ctx, r.conn, nil, 2000)
		if err != nil {
			return err
		}
		if err := pgx.BeginFunc(ctx, r.conn, func(tx pgx.Tx) error { return r.applyEvents(ctx, tx, evs) }); err != nil {
			return err
		}
		r.res.CaughtUp += int64(len(evs))
		r.opt.Progress(Progress{Phase: "catch-up", Done: r.res.CaughtUp, Total: r.res.CaughtUp})
		if len(evs) < 2000 && (!all || len(evs) == 0) {
			return nil
		}
	}
}

func (r *rebuilder) swap(ctx context.Context) error {
	if err := r.shadowTables(ctx); err != nil {
		return err
	}
	if _, err := r.exec(ctx, `SET search_path = `+shadowSchema+`, public`); err != nil {
		return err
	}
	if r.opt.EventAtATime {
		// From the very beginning, every event through the live code path.
		r.cursor = eventstore.Position{}
		if err := r.shadowIndexes(ctx); err != nil {
			return err
		}
		if err := r.catchUp(ctx, true); err != nil {
			return err
		}
		r.res.Events, r.res.CaughtUp = r.res.CaughtUp, 0
	} else {
		if err := r.begin(ctx); err != nil {
			return err
		}
		if err := r.read(ctx); err != nil {
			return err
		}
		for _, sql := range r.sp.fill {
			if _, err := r.exec(ctx, sql); err != nil {
				return err
			}
		}
		if err := r.shadowIndexes(ctx); err != nil {
			return err
		}
		for _, t := range r.sp.tables {
			if _, err := r.exec(ctx, `ANALYZE `+shadowSchema+`.`+t); err != nil {
				return err
			}
		}
		if err := r.catchUp(ctx, false); err != nil {
			return err
		}
	}
	r.opt.Progress(Progress{Phase: "swap"})
	err := pgx.BeginFunc(ctx, r.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '30s'`); err != nil {
			return err
		}
		// The projector's batch holds this row: taking it waits for the
		// batch in flight and pauses the next until the swap commits.
		var off eventstore.Position
		var offTx int64
		err := tx.QueryRow(ctx, `SELECT last_processed_transaction_id::text::bigint, offset_acked FROM consumer_offsets
			WHERE consumer_group = $1 FOR UPDATE`, r.sp.group).Scan(&offTx, &off.GlobalPosition)
		haveOffset := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		off.TransactionID = uint64(offTx)
		if haveOffset && less(r.cursor, off) {
			// The projector got further than the catch-up: apply up to it.
			for {
				evs, err := r.readEvents(ctx, tx, &off, 2000)
				if err != nil {
					return err
				}
				if err := r.applyEvents(ctx, tx, evs); err != nil {
					return err
				}
				r.res.CaughtUp += int64(len(evs))
				if len(evs) < 2000 {
					break
				}
			}
		}
		qualified := make([]string, len(r.sp.tables))
		for i, t := range r.sp.tables {
			qualified[i] = "public." + t
		}
		// What LIKE does not copy: the live tables' storage parameters
		// (autovacuum, migration 0016).
		reloptions := map[string][]string{}
		for _, t := range r.sp.tables {
			var opts []string
			if err := tx.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = ('public.' || $1)::regclass`, t).Scan(&opts); err != nil {
				return err
			}
			reloptions[t] = opts
		}
		if _, err := tx.Exec(ctx, `DROP TABLE `+strings.Join(qualified, ", ")); err != nil {
			return err
		}
		for _, t := range r.sp.tables {
			if _, err := tx.Exec(ctx, `ALTER TABLE `+shadowSchema+`.`+t+` SET SCHEMA public`); err != nil {
				return err
			}
			if err := restoreTable(ctx, tx, t, reloptions[t]); err != nil {
				return err
			}
		}
		if !haveOffset || less(off, r.cursor) {
			// The new tables are ahead of the projector: move it on to them.
			_, err = tx.Exec(ctx, `INSERT INTO consumer_offsets (consumer_group, offset_acked, last_processed_transaction_id)
				VALUES ($1, $2, $3::text::xid8) ON CONFLICT (consumer_group) DO UPDATE
				SET offset_acked = excluded.offset_acked, last_processed_transaction_id = excluded.last_processed_transaction_id`,
				r.sp.group, r.cursor.GlobalPosition, strconv.FormatUint(r.cursor.TransactionID, 10))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("swap: %w", err)
	}
	if _, err := r.exec(ctx, `SET search_path = public`); err != nil {
		return err
	}
	return r.conn.QueryRow(ctx, `SELECT count(*) FROM public.`+r.sp.tables[0]).Scan(&r.res.Rows)
}

func less(a, b eventstore.Position) bool {
	return a.TransactionID < b.TransactionID || (a.TransactionID == b.TransactionID && a.GlobalPosition < b.GlobalPosition)
}

func (r *rebuilder) merge(ctx context.Context) error {
	if err := r.begin(ctx); err != nil {
		return err
	}
	if err := r.read(ctx); err != nil {
		return err
	}
	r.opt.Progress(Progress{Phase: "swap"})
	// READ COMMITTED on purpose: the tail holds every event committed before
	// it ran, and a writer committing after it also wrote its job row at a
	// newer version, which the upsert's version guard then keeps.
	return pgx.BeginFunc(ctx, r.conn, func(tx pgx.Tx) error {
		if err := r.readTail(ctx); err != nil {
			return err
		}
		for _, sql := range r.sp.fill {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, `INSERT INTO delivery_jobs AS j (delivery_id, org_id, env_id, event_id, connection_id, destination_id,
				received_uuid, state, attempt_id, attempt_number, trigger_type, due_at, version)
			SELECT delivery_id, org_id, env_id, event_id, connection_id, destination_id, received_uuid, state, attempt_id,
				attempt_number, trigger_type, due_at, version FROM rb_jobs
			ON CONFLICT (delivery_id) DO UPDATE SET state = excluded.state, attempt_id = excluded.attempt_id,
				attempt_number = excluded.attempt_number, trigger_type = excluded.trigger_type, due_at = excluded.due_at,
				lease_until = NULL, leased_by = NULL, version = excluded.version,
				auto_retries = NULL, last_number = NULL, reopened = NULL -- unknown here: the stream is loaded
			WHERE j.version < excluded.version`)
		if err != nil {
			return fmt.Errorf("merge jobs: %w", err)
		}
		r.res.Repaired = tag.RowsAffected()
		if _, err := tx.Exec(ctx, `SELECT pg_notify('`+JobsChannel+`', '')`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT count(*) FROM delivery_jobs`).Scan(&r.res.Rows)
	})
}

// locked rebuilds a small table inside one transaction that first locks it
// against writers: every event its writers recorded has committed, readers
// see the old rows until the commit.
func (r *rebuilder) locked(ctx context.Context) error {
	return pgx.BeginFunc(ctx, r.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE `+strings.Join(r.sp.tables, ", ")+` IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		r.xmin = 1 << 62 // everything committed: the lock stops new writes to these streams
		r.cursor.GlobalPosition = 1
		if err := r.read(ctx); err != nil {
			return err
		}
		r.opt.Progress(Progress{Phase: "swap"})
		for _, sql := range r.sp.fill {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, `SELECT count(*) FROM `+r.sp.tables[0]).Scan(&r.res.Rows)
	})
}

// countedLists are the read models whose rows list_counts counts (migration
// 0017), by the list name it counts them under.
var countedLists = map[string]string{"events_view": "events", "delivery_attempts": "attempts"}

// restoreTable gives a rebuilt table, swapped in for the live one, what
// CREATE TABLE … LIKE leaves out: its storage parameters, and for a counted
// list its counting triggers and a fresh count.
func restoreTable(ctx context.Context, tx pgx.Tx, table string, reloptions []string) error {
	if len(reloptions) > 0 {
		if _, err := tx.Exec(ctx, `ALTER TABLE public.`+table+` SET (`+strings.Join(reloptions, ", ")+`)`); err != nil {
			return err
		}
	}
	list, ok := countedLists[table]
	if !ok {
		return nil
	}
	for _, q := range []string{
		`CREATE TRIGGER ` + table + `_counted AFTER INSERT ON public.` + table + ` REFERENCING NEW TABLE AS counted_rows
			FOR EACH STATEMENT EXECUTE FUNCTION hookstream_count_inserted('` + list + `')`,
		`CREATE TRIGGER ` + table + `_uncounted AFTER DELETE ON public.` + table + ` REFERENCING OLD TABLE AS counted_rows
			FOR EACH STATEMENT EXECUTE FUNCTION hookstream_count_deleted('` + list + `')`,
		`DELETE FROM list_counts WHERE list = '` + list + `'`,
		`INSERT INTO list_counts SELECT org_id, env_id, '` + list + `', count(*) FROM public.` + table + ` GROUP BY org_id, env_id`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("restore %s: %w", table, err)
		}
	}
	return nil
}
