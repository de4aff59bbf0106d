package redeliver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/projections"
)

// ReplayInput is POST /v1/replay's body.
type ReplayInput struct {
	DestinationID *string         `json:"destination_id"`
	SourceID      *string         `json:"source_id"`
	ConnectionID  *string         `json:"connection_id"`
	From          *string         `json:"from"`
	To            *string         `json:"to"`
	Filter        json.RawMessage `json:"filter"`
	RateLimit     *int            `json:"rate_limit"`
	MaxEvents     *int            `json:"max_events"`
}

// ReplayJob is hookstream's replay job object.
type ReplayJob struct {
	ID            string  `json:"id"`
	DestinationID string  `json:"destination_id"`
	SourceID      *string `json:"source_id"`
	ConnectionID  *string `json:"connection_id"`
	From          string  `json:"from"`
	To            string  `json:"to"`
	RateLimit     int     `json:"rate_limit"`
	MaxEvents     int     `json:"max_events"`
	Status        string  `json:"status"` // running | completed | failed | cancelled
	Total         int     `json:"total"`
	Released      int     `json:"released"`
	Processed     int     `json:"processed"`
	Succeeded     int     `json:"succeeded"`
	Failed        int     `json:"failed"`
	// Skipped are listed events that history retention removed before
	// their batch was released: they were not sent, and the replay
	// completes without them.
	Skipped     int     `json:"skipped"`
	Error       *string `json:"error"`
	StartedAt   string  `json:"started_at"`
	CompletedAt *string `json:"completed_at"`
	CancelledAt *string `json:"cancelled_at"`
	// Waiting says why a running replay's deliveries are held, or null:
	// its destination is paused or its circuit open, its connection or
	// source paused.
	Waiting *string `json:"waiting"`
}

// Done reports whether the job will change no more.
func (j ReplayJob) Done() bool { return j.Status != "running" }

// replayFilter reads the optional filter: a list of connection filter rules,
// or one rule.
func replayFilter(raw json.RawMessage) ([]domain.FilterRule, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var rules []domain.FilterRule
	if err := json.Unmarshal(raw, &rules); err != nil {
		var one domain.FilterRule
		if err := json.Unmarshal(raw, &one); err != nil || one.Field == "" {
			return nil, domain.Errorf(domain.EInvalid, "Invalid body: 'filter' must be a filter rule {field, op, value} or a list of them")
		}
		rules = []domain.FilterRule{one}
	}
	if err := domain.ValidateFilterRules(rules); err != nil {
		return nil, domain.Errorf(domain.EInvalid, "%s", strings.Replace(err.Error(), "'filter_rules", "'filter", 1))
	}
	return rules, nil
}

// replayParams is a validated ReplayInput.
type replayParams struct {
	destID, sourceID, connID string
	from, to                 time.Time
	rate, max                int
	rules                    []domain.FilterRule
}

func validateReplay(in ReplayInput) (replayParams, error) {
	p := replayParams{rate: domain.ReplayDefaultRate, max: domain.ReplayDefaultMaxEvents}
	str := func(v *string) string {
		if v == nil {
			return ""
		}
		return *v
	}
	p.destID, p.sourceID, p.connID = str(in.DestinationID), str(in.SourceID), str(in.ConnectionID)
	if p.destID == "" {
		return p, domain.Errorf(domain.EInvalid, "Invalid body: 'destination_id' is required")
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *time.Time
	}{{"from", in.From, &p.from}, {"to", in.To, &p.to}} {
		if f.v == nil || *f.v == "" {
			return p, domain.Errorf(domain.EInvalid, "Invalid body: '%s' is required", f.name)
		}
		t, err := time.Parse(time.RFC3339Nano, *f.v)
		if err != nil {
			return p, domain.Errorf(domain.EInvalid, "Invalid body: '%s' must be an ISO 8601 time such as 2026-03-01T14:30:00Z", f.name)
		}
		*f.dst = t.UTC()
	}
	if !p.from.Before(p.to) {
		return p, domain.Errorf(domain.EInvalid, "Invalid body: 'from' must be before 'to'")
	}
	if p.to.Sub(p.from) > domain.ReplayMaxSpan {
		return p, domain.Errorf(domain.EInvalid, "Invalid body: a replay covers at most %d days ('from' to 'to')", int(domain.ReplayMaxSpan.Hours()/24))
	}
	if in.RateLimit != nil {
		if *in.RateLimit < 1 || *in.RateLimit > domain.ReplayMaxRate {
			return p, domain.Errorf(domain.EInvalid, "Invalid body: 'rate_limit' must be between 1 and %d events per second", domain.ReplayMaxRate)
		}
		p.rate = *in.RateLimit
	}
	if in.MaxEvents != nil {
		if *in.MaxEvents < 1 || *in.MaxEvents > domain.ReplayMaxEvents {
			return p, domain.Errorf(domain.EInvalid, "Invalid body: 'max_events' must be between 1 and %d", domain.ReplayMaxEvents)
		}
		p.max = *in.MaxEvents
	}
	rules, err := replayFilter(in.Filter)
	p.rules = rules
	return p, err
}

// CreateReplay starts a replay: it fixes the events to re-deliver (the
// destination's sources' events received in [from, to], chronological, at
// most max_events, matching the filter, duplicates left out; read from the
// log, so none acknowledged before the call is missed) and records ReplayRequested. The
// engine releases them rate_limit per second as deliveries with
// trigger_type replay, which are never retried automatically.
func (s *Redeliverer) CreateReplay(ctx context.Context, t domain.Tenant, in ReplayInput, rid string) (ReplayJob, error) {
	p, err := validateReplay(in)
	if err != nil {
		return ReplayJob{}, err
	}
	dest, err := s.reg.GetDestination(ctx, t, p.destID)
	if err != nil {
		return ReplayJob{}, err
	}
	if dest.Status == "disabled" {
		return ReplayJob{}, domain.Errorf(domain.EInvalid, "Invalid body: the destination is disabled")
	}
	if p.sourceID != "" {
		if _, err := s.reg.GetSource(ctx, t, p.sourceID); err != nil {
			return ReplayJob{}, err
		}
	}
	var sources []string
	if p.connID != "" {
		c, err := s.reg.GetConnection(ctx, t, p.connID)
		if err != nil {
			return ReplayJob{}, err
		}
		if c.DestinationID != p.destID {
			return ReplayJob{}, domain.Errorf(domain.EInvalid, "Invalid body: connection %s does not route to destination %s", p.connID, p.destID)
		}
		if p.sourceID != "" && c.SourceID != p.sourceID {
			return ReplayJob{}, domain.Errorf(domain.EInvalid, "Invalid body: connection %s does not read from source %s", p.connID, p.sourceID)
		}
		sources = []string{c.SourceID}
	} else if p.sourceID != "" {
		sources = []string{p.sourceID}
	} else {
		rows, err := s.pool.Query(ctx, `SELECT DISTINCT source_id FROM connections WHERE destination_id = $1`, p.destID)
		if sources, err = kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
			var id string
			return id, r.Scan(&id)
		}); err != nil {
			return ReplayJob{}, fmt.Errorf("replay: find sources: %w", err)
		}
	}
	ids, err := s.selectReplayEvents(ctx, t, sources, p)
	if err != nil {
		return ReplayJob{}, err
	}
	if len(ids) == 0 {
		return ReplayJob{}, domain.Errorf(domain.ENotFound, "Destination or events not found: no events in the range from the destination's sources")
	}
	id, now := kit.NewID(), s.now()
	req := domain.ReplayRequested{ReplayID: id, DestinationID: p.destID, SourceID: p.sourceID, ConnectionID: p.connID,
		From: p.from, To: p.to, RateLimit: p.rate, MaxEvents: p.max, EventIDs: ids, RequestedAt: now}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := checkRunningReplays(ctx, tx, t); err != nil {
			return err
		}
		if _, err := s.store.Append(ctx, tx, eventstore.StreamAppend{
			StreamType: domain.StreamReplay, StreamID: id, OrgID: t.OrgID, EnvID: t.EnvID, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvReplayRequested, Payload: req, Metadata: eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: id}}},
		}); err != nil {
			return err
		}
		return insertReplayJob(ctx, tx, t.OrgID, t.EnvID, req)
	})
	if domain.ErrorCode(err) == domain.EConflict {
		return ReplayJob{}, err
	}
	if err != nil {
		return ReplayJob{}, fmt.Errorf("replay: record: %w", err)
	}
	return s.GetReplay(ctx, t, id)
}

// checkRunningReplays refuses a replay while the environment runs
// ReplayMaxRunning already; a transaction lock per environment makes two
// concurrent requests count each other.
func checkRunningReplays(ctx context.Context, tx pgx.Tx, t domain.Tenant) error {
	var running int
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('replay:' || $1 || ':' || $2))`, t.OrgID, t.EnvID); err != nil {
		return fmt.Errorf("replay: lock: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM replay_jobs WHERE org_id = $1 AND env_id = $2 AND status = 'running'`,
		t.OrgID, t.EnvID).Scan(&running); err != nil {
		return fmt.Errorf("replay: count running: %w", err)
	}
	if running >= domain.ReplayMaxRunning {
		return domain.Errorf(domain.EConflict, "Too many running replays: %d run in this environment (at most %d); wait for one to finish",
			running, domain.ReplayMaxRunning)
	}
	return nil
}

// insertReplayJob writes a replay's row from its ReplayRequested.
func insertReplayJob(ctx context.Context, tx pgx.Tx, org, env string, r domain.ReplayRequested) error {
	_, err := tx.Exec(ctx, `INSERT INTO replay_jobs (id, org_id, env_id, destination_id, source_id, connection_id, from_at, to_at,
			rate_limit, max_events, status, total, created_at, next_batch_at)
		VALUES ($1, $2, $3, $4, NULLIF($5, ''), NULLIF($6, ''), $7, $8, $9, $10, 'running', $11, $12, $12) ON CONFLICT (id) DO NOTHING`,
		r.ReplayID, org, env, r.DestinationID, r.SourceID, r.ConnectionID, r.From, r.To, r.RateLimit, r.MaxEvents, len(r.EventIDs), r.RequestedAt)
	return err
}

// selectReplayEvents returns the ids of the events to replay, oldest first.
func (s *Redeliverer) selectReplayEvents(ctx context.Context, t domain.Tenant, sources []string, p replayParams) ([]string, error) {
	if len(sources) == 0 {
		return nil, nil
	}
	limit := p.max
	if len(p.rules) > 0 {
		limit = domain.ReplayMaxScanned + 1 // filtered in Go: read on until max_events match, within the bound
	}
	// From the log itself, not events_view: a webhook acknowledged a moment
	// ago is in the replay even if the projector has not listed it yet.
	// recorded_at (BRIN-indexed) follows received_at within milliseconds, so
	// a widened recorded_at range narrows the scan; received_at decides.
	// Duplicates were never delivered and are not replayed, nor are webhooks
	// whose payload expired (retention): there is nothing left to send.
	rows, err := s.pool.Query(ctx, `SELECT stream_id, coalesce(payload->>'method', ''), coalesce(payload->>'content_type', ''),
			coalesce(payload->>'source_ip', ''), coalesce(payload->'headers', 'null'), coalesce(payload->>'body_b64', '')
		FROM events
		WHERE event_type = $7 AND org_id = $1 AND env_id = $2
		  AND recorded_at >= $4::timestamptz - interval '5 minutes' AND recorded_at <= $5::timestamptz + interval '5 minutes'
		  AND payload->>'source_id' = ANY($3)
		  AND hs_ts(payload->>'received_at') >= $4 AND hs_ts(payload->>'received_at') <= $5
		  AND coalesce(payload->>'dedup_status', 'unique') <> 'duplicate'
		  AND NOT payload ? 'payload_expired_at'
		ORDER BY hs_ts(payload->>'received_at'), stream_id
		LIMIT $6`, t.OrgID, t.EnvID, sources, p.from, p.to, limit, domain.EvEventReceived)
	if err != nil {
		return nil, fmt.Errorf("replay: select events: %w", err)
	}
	defer rows.Close()
	var ids []string
	scanned := 0
	for rows.Next() && len(ids) < p.max {
		if scanned++; scanned > domain.ReplayMaxScanned {
			return nil, domain.Errorf(domain.EInvalid, "Invalid body: the filter is checked against at most %d events of the range, and %d of them matched; narrow 'from' and 'to' or name the source",
				domain.ReplayMaxScanned, len(ids))
		}
		var id, method, ct, ip, body string
		var headers map[string][]string
		if err := rows.Scan(&id, &method, &ct, &ip, &headers, &body); err != nil {
			return nil, fmt.Errorf("replay: scan event: %w", err)
		}
		if len(p.rules) > 0 && !domain.MatchFilter(p.rules, filterInput(method, ct, ip, headers, body)) {
			continue
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// filterInput is what connection filters see of a stored event.
func filterInput(method, contentType, ip string, headers map[string][]string, bodyB64 string) domain.FilterInput {
	in := domain.FilterInput{Headers: map[string]string{}, Method: method, ContentType: contentType, SourceIP: ip}
	for k, v := range headers {
		in.Headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	body, _ := base64.StdEncoding.DecodeString(bodyB64)
	if mt, _, _ := mime.ParseMediaType(contentType); len(body) > 0 && (mt == "" || strings.Contains(mt, "json")) {
		var payload any
		if json.Unmarshal(body, &payload) == nil {
			in.Payload = payload
		}
	}
	return in
}

const replayCols = `j.id, j.destination_id, j.source_id, j.connection_id, j.from_at, j.to_at, j.rate_limit, j.max_events, j.status,
	j.total, j.released, j.skipped, j.error, j.created_at, coalesce(p.processed, 0), coalesce(p.succeeded, 0), coalesce(p.failed, 0), p.last_at,
	j.cancelled_at, h.dest_status, h.circuit, h.opened_at, h.route_paused`

// replayFrom is the job with its progress (a count of its attempts) and
// what may hold its deliveries, as the claim sees it.
const replayFrom = `replay_jobs j LEFT JOIN LATERAL (
		SELECT count(*) FILTER (WHERE status <> 'pending') AS processed, count(*) FILTER (WHERE status = 'success') AS succeeded,
			count(*) FILTER (WHERE status = 'failed') AS failed,
			max(created_at + coalesce(duration_ms, 0) * interval '1 millisecond') FILTER (WHERE status <> 'pending') AS last_at
		FROM delivery_attempts WHERE replay_id = j.id AND trigger_type = 'replay') p ON true
	LEFT JOIN LATERAL (
		SELECT d.status AS dest_status, c.state AS circuit, c.opened_at,
			(SELECT CASE WHEN cn.status = 'paused' THEN 'connection' WHEN s.status = 'paused' THEN 'source' END
				FROM connections cn JOIN sources s ON s.id = cn.source_id WHERE cn.id = j.connection_id
			 UNION ALL SELECT 'source' FROM sources s WHERE j.connection_id IS NULL AND s.id = j.source_id AND s.status = 'paused'
			 LIMIT 1) AS route_paused
		FROM (SELECT 1) one LEFT JOIN destinations d ON d.id = j.destination_id
			LEFT JOIN destination_circuits c ON c.destination_id = j.destination_id) h ON j.status = 'running'`

func scanReplay(row pgx.Row) (ReplayJob, error) {
	var j ReplayJob
	var from, to, created time.Time
	var lastAt, cancelledAt, openedAt *time.Time
	var failedStatus string
	var destStatus, circuit, routePaused *string
	err := row.Scan(&j.ID, &j.DestinationID, &j.SourceID, &j.ConnectionID, &from, &to, &j.RateLimit, &j.MaxEvents, &failedStatus,
		&j.Total, &j.Released, &j.Skipped, &j.Error, &created, &j.Processed, &j.Succeeded, &j.Failed, &lastAt,
		&cancelledAt, &destStatus, &circuit, &openedAt, &routePaused)
	j.From, j.To, j.StartedAt = kit.ISOTime(from), kit.ISOTime(to), kit.ISOTime(created)
	j.CancelledAt = kit.ISOTimePtr(cancelledAt)
	switch {
	case failedStatus == "failed":
		j.Status = "failed"
	case failedStatus == "cancelled":
		j.Status = "cancelled"
	case j.Processed+j.Skipped >= j.Total:
		j.Status = "completed"
		j.CompletedAt = kit.ISOTimePtr(lastAt)
	default:
		j.Status = "running"
		j.Waiting = replayWaiting(j, deref(destStatus), deref(circuit), openedAt, deref(routePaused))
	}
	return j, err
}

// replayWaiting says why a running replay's deliveries are held, if they
// are, and what releases them.
func replayWaiting(j ReplayJob, destStatus, circuit string, openedAt *time.Time, routePaused string) *string {
	var why string
	switch {
	case destStatus == "paused":
		why = fmt.Sprintf("the destination is paused; resume it with PATCH /v1/destinations/%s {\"status\":\"active\"}", j.DestinationID)
	case circuit == domain.CircuitOpen || circuit == domain.CircuitHalfOpen:
		since := ""
		if openedAt != nil {
			since = " since " + kit.ISOTime(*openedAt)
		}
		why = fmt.Sprintf("the destination's circuit is %s%s; deliveries resume when a probe succeeds, or reset it with "+
			"POST /v1/destinations/%s/circuit/reset", strings.ReplaceAll(circuit, "_", "-"), since, j.DestinationID)
	case routePaused == "connection":
		why = fmt.Sprintf("the connection is paused; resume it with PATCH /v1/connections/%s {\"status\":\"active\"}", deref(j.ConnectionID))
	case routePaused == "source":
		why = "the source is paused; resume it with PATCH /v1/sources/{id} {\"status\":\"active\"}"
	default:
		return nil
	}
	return &why
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// GetReplay returns one replay job with its progress, or ENotFound "Replay job not found".
func (s *Redeliverer) GetReplay(ctx context.Context, t domain.Tenant, id string) (ReplayJob, error) {
	if !kit.ValidID(id) {
		return ReplayJob{}, kit.NotFound("Replay job")
	}
	j, err := scanReplay(s.pool.QueryRow(ctx, `SELECT `+replayCols+` FROM `+replayFrom+` WHERE j.id = $1 AND j.org_id = $2 AND j.env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return ReplayJob{}, kit.NotFound("Replay job")
	}
	if err != nil {
		return ReplayJob{}, fmt.Errorf("get replay: %w", err)
	}
	return j, nil
}

// ListReplays lists the tenant's replay jobs, newest first.
func (s *Redeliverer) ListReplays(ctx context.Context, t domain.Tenant, limit, offset int) ([]ReplayJob, projections.Pagination, error) {
	p := projections.Pagination{Limit: limit, Offset: offset, Total: new(int)}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM replay_jobs WHERE org_id = $1 AND env_id = $2`, t.OrgID, t.EnvID).Scan(p.Total); err != nil {
		return nil, p, fmt.Errorf("list replays: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+replayCols+` FROM `+replayFrom+` WHERE j.org_id = $1 AND j.env_id = $2
		ORDER BY j.created_at DESC, j.id DESC LIMIT $3 OFFSET $4`, t.OrgID, t.EnvID, limit, offset)
	out, err := kit.CollectRows(rows, err, scanReplay)
	if err != nil {
		return nil, p, fmt.Errorf("list replays: %w", err)
	}
	p.HasMore = offset+len(out) < *p.Total
	return out, p, nil
}

// ReplayTenant is the tenant owning a destination, for operator commands
// that name a destination and act with full database access.
func (s *Redeliverer) ReplayTenant(ctx context.Context, destinationID, actor string) (domain.Tenant, error) {
	t := domain.Tenant{Actor: actor}
	err := s.pool.QueryRow(ctx, `SELECT org_id, env_id FROM destinations WHERE id = $1`, destinationID).Scan(&t.OrgID, &t.EnvID)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, kit.NotFound("Destination")
	}
	return t, err
}

// ---- the engine's side: releasing replays ----

// CancelReplay stops a running replay: ReplayCancelled at the stream's
// expected version, so it and a batch release never both land; deliveries
// already released (at most the current batch, due within its second) still
// go out. ENotFound for another tenant's or an unknown id; EConflict when
// nothing is left to stop.
func (s *Redeliverer) CancelReplay(ctx context.Context, t domain.Tenant, id, rid string) (ReplayJob, error) {
	if _, err := s.GetReplay(ctx, t, id); err != nil {
		return ReplayJob{}, err
	}
	for try := 0; ; try++ {
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			_, r, err := s.loadReplay(ctx, tx, id)
			if err != nil {
				return err
			}
			now := s.now()
			d, err := r.Cancel(now)
			if err != nil {
				return err
			}
			if _, err := s.store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamReplay, StreamID: id, OrgID: t.OrgID, EnvID: t.EnvID,
				Expected: r.Version(), Events: kit.NewEvents([]domain.Decided{d}, eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: id})}); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE replay_jobs SET status = 'cancelled', cancelled_at = $2 WHERE id = $1 AND status = 'running'`, id, now)
			return err
		})
		switch {
		case err == nil:
			return s.GetReplay(ctx, t, id)
		case errors.Is(err, eventstore.ErrConcurrency) && try < 5:
			continue // a batch was released meanwhile: decide again on it
		case errors.Is(err, eventstore.ErrConcurrency):
			return ReplayJob{}, domain.Errorf(domain.EConflict, "The replay changed concurrently; try again")
		case domain.ErrorCode(err) != domain.EInternal:
			return ReplayJob{}, err
		default:
			return ReplayJob{}, fmt.Errorf("cancel replay: %w", err)
		}
	}
}
