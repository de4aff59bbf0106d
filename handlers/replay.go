package handlers

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
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/kit"
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
	Status        string  `json:"status"` // running | completed | failed
	Total         int     `json:"total"`
	Released      int     `json:"released"`
	Processed     int     `json:"processed"`
	Succeeded     int     `json:"succeeded"`
	Failed        int     `json:"failed"`
	Error         *string `json:"error"`
	StartedAt     string  `json:"started_at"`
	CompletedAt   *string `json:"completed_at"`
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
func (s *Service) CreateReplay(ctx context.Context, t domain.Tenant, in ReplayInput, rid string) (ReplayJob, error) {
	p, err := validateReplay(in)
	if err != nil {
		return ReplayJob{}, err
	}
	dest, _, err := s.getDestination(ctx, t, p.destID)
	if err != nil {
		return ReplayJob{}, err
	}
	if dest.Status == "disabled" {
		return ReplayJob{}, domain.Errorf(domain.EInvalid, "Invalid body: the destination is disabled")
	}
	if p.sourceID != "" {
		if _, err := s.GetSource(ctx, t, p.sourceID); err != nil {
			return ReplayJob{}, err
		}
	}
	var sources []string
	if p.connID != "" {
		c, err := s.GetConnection(ctx, t, p.connID)
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
		if _, err := s.store.Append(ctx, tx, eventstore.StreamAppend{
			StreamType: domain.StreamReplay, StreamID: id, OrgID: t.OrgID, EnvID: t.EnvID, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvReplayRequested, Payload: req, Metadata: eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: id}}},
		}); err != nil {
			return err
		}
		return insertReplayJob(ctx, tx, t.OrgID, t.EnvID, req)
	})
	if err != nil {
		return ReplayJob{}, fmt.Errorf("replay: record: %w", err)
	}
	return s.GetReplay(ctx, t, id)
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
func (s *Service) selectReplayEvents(ctx context.Context, t domain.Tenant, sources []string, p replayParams) ([]string, error) {
	if len(sources) == 0 {
		return nil, nil
	}
	limit := p.max
	if len(p.rules) > 0 {
		limit = -1 // filtered in Go: read on until max_events match
	}
	// From the log itself, not events_view: a webhook acknowledged a moment
	// ago is in the replay even if the projector has not listed it yet.
	// recorded_at (BRIN-indexed) follows received_at within milliseconds, so
	// a widened recorded_at range narrows the scan; received_at decides.
	// Duplicates were never delivered and are not replayed.
	rows, err := s.pool.Query(ctx, `SELECT stream_id, coalesce(payload->>'method', ''), coalesce(payload->>'content_type', ''),
			coalesce(payload->>'source_ip', ''), coalesce(payload->'headers', 'null'), coalesce(payload->>'body_b64', '')
		FROM events
		WHERE event_type = $7 AND org_id = $1 AND env_id = $2
		  AND recorded_at >= $4::timestamptz - interval '5 minutes' AND recorded_at <= $5::timestamptz + interval '5 minutes'
		  AND payload->>'source_id' = ANY($3)
		  AND hs_ts(payload->>'received_at') >= $4 AND hs_ts(payload->>'received_at') <= $5
		  AND coalesce(payload->>'dedup_status', 'unique') <> 'duplicate'
		ORDER BY hs_ts(payload->>'received_at'), stream_id
		LIMIT CASE WHEN $6::int < 0 THEN NULL ELSE $6::int END`, t.OrgID, t.EnvID, sources, p.from, p.to, limit, domain.EvEventReceived)
	if err != nil {
		return nil, fmt.Errorf("replay: select events: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() && len(ids) < p.max {
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
	j.total, j.released, j.error, j.created_at, coalesce(p.processed, 0), coalesce(p.succeeded, 0), coalesce(p.failed, 0), p.last_at`

const replayFrom = `replay_jobs j LEFT JOIN LATERAL (
		SELECT count(*) FILTER (WHERE status <> 'pending') AS processed, count(*) FILTER (WHERE status = 'success') AS succeeded,
			count(*) FILTER (WHERE status = 'failed') AS failed,
			max(created_at + coalesce(duration_ms, 0) * interval '1 millisecond') FILTER (WHERE status <> 'pending') AS last_at
		FROM delivery_attempts WHERE replay_id = j.id AND trigger_type = 'replay') p ON true`

func scanReplay(row pgx.Row) (ReplayJob, error) {
	var j ReplayJob
	var from, to, created time.Time
	var lastAt *time.Time
	var failedStatus string
	err := row.Scan(&j.ID, &j.DestinationID, &j.SourceID, &j.ConnectionID, &from, &to, &j.RateLimit, &j.MaxEvents, &failedStatus,
		&j.Total, &j.Released, &j.Error, &created, &j.Processed, &j.Succeeded, &j.Failed, &lastAt)
	j.From, j.To, j.StartedAt = kit.ISOTime(from), kit.ISOTime(to), kit.ISOTime(created)
	switch {
	case failedStatus == "failed":
		j.Status = "failed"
	case j.Processed >= j.Total:
		j.Status = "completed"
		j.CompletedAt = kit.ISOTimePtr(lastAt)
	default:
		j.Status = "running"
	}
	return j, err
}

// GetReplay returns one replay job with its progress, or ENotFound "Replay job not found".
func (s *Service) GetReplay(ctx context.Context, t domain.Tenant, id string) (ReplayJob, error) {
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
func (s *Service) ListReplays(ctx context.Context, t domain.Tenant, limit, offset int) ([]ReplayJob, kit.Pagination, error) {
	p := kit.Pagination{Limit: limit, Offset: offset}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM replay_jobs WHERE org_id = $1 AND env_id = $2`, t.OrgID, t.EnvID).Scan(&p.Total); err != nil {
		return nil, p, fmt.Errorf("list replays: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+replayCols+` FROM `+replayFrom+` WHERE j.org_id = $1 AND j.env_id = $2
		ORDER BY j.created_at DESC, j.id DESC LIMIT $3 OFFSET $4`, t.OrgID, t.EnvID, limit, offset)
	out, err := kit.CollectRows(rows, err, scanReplay)
	if err != nil {
		return nil, p, fmt.Errorf("list replays: %w", err)
	}
	p.HasMore = offset+len(out) < p.Total
	return out, p, nil
}

// ReplayTenant is the tenant owning a destination, for operator commands
// that name a destination and act with full database access.
func (s *Service) ReplayTenant(ctx context.Context, destinationID, actor string) (domain.Tenant, error) {
	t := domain.Tenant{Actor: actor}
	err := s.pool.QueryRow(ctx, `SELECT org_id, env_id FROM destinations WHERE id = $1`, destinationID).Scan(&t.OrgID, &t.EnvID)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, kit.NotFound("Destination")
	}
	return t, err
}

// ---- the engine's side: releasing replays ----

// runReplays releases the running replays' batches as they come due, until
// ctx ends. Every batch is one transaction at the replay stream's expected
// version, so two engines never release the same batch and a restart
// resumes after the last recorded one.
func (e *Engine) runReplays(ctx context.Context) {
	ticker := time.NewTicker(e.p.ReplayPoll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		rows, err := e.p.Pool.Query(ctx, `SELECT id FROM replay_jobs WHERE status = 'running' AND released < total AND next_batch_at <= $1
			ORDER BY next_batch_at`, e.p.Now())
		ids, err := kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
			var id string
			return id, r.Scan(&id)
		})
		if err != nil {
			if ctx.Err() == nil {
				e.p.Log.Error("replay: list running", "err", err)
			}
			continue
		}
		for _, id := range ids {
			if err := e.releaseReplay(ctx, id); err != nil && !errors.Is(err, eventstore.ErrConcurrency) && ctx.Err() == nil {
				e.p.Log.Error("replay: release batch", "replay", id, "err", err)
			}
		}
	}
}

// releaseReplay hands the replay's next batch, when due, to the delivery
// pipeline: one DeliveryRequested (trigger replay) per event, due evenly
// across the second, and ReplayReleased, in one transaction.
func (e *Engine) releaseReplay(ctx context.Context, id string) error {
	return pgx.BeginFunc(ctx, e.p.Pool, func(tx pgx.Tx) error {
		evs, err := e.p.Store.Load(ctx, tx, id)
		if err != nil {
			return err
		}
		r := &domain.Replay{}
		for _, ev := range evs {
			if err := r.Apply(ev.StreamVersion, ev.Type, ev.Payload); err != nil {
				return err
			}
		}
		now := e.p.Now().UTC()
		offset, batch := r.NextBatch(now)
		if len(batch) == 0 {
			return nil
		}
		req := r.Requested()
		org, env := evs[0].OrgID, evs[0].EnvID
		stream := func(d domain.Decided) eventstore.StreamAppend {
			return eventstore.StreamAppend{StreamType: domain.StreamReplay, StreamID: id, OrgID: org, EnvID: env, Expected: r.Version(),
				Events: toNewEvents([]domain.Decided{d}, eventstore.Metadata{Actor: "replay", CorrelationID: id})}
		}
		var destName, url, method, destStatus string
		err = tx.QueryRow(ctx, `SELECT name, url, method, status FROM destinations WHERE id = $1`, req.DestinationID).Scan(&destName, &url, &method, &destStatus)
		reason := ""
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			reason = "the destination was deleted"
		case err != nil:
			return fmt.Errorf("load destination: %w", err)
		case destStatus == "disabled":
			reason = "the destination is disabled"
		}
		if reason != "" {
			if _, err := e.p.Store.Append(ctx, tx, stream(r.Fail(reason, now))); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE replay_jobs SET status = 'failed', error = $2, failed_at = $3 WHERE id = $1`, id, reason, now)
			return err
		}
		type received struct{ uuid, source string }
		found := map[string]received{}
		rows, err := tx.Query(ctx, `SELECT stream_id, event_id::text, payload->>'source_id' FROM events
			WHERE stream_id = ANY($1) AND event_type = $2`, batch, domain.EvEventReceived)
		if _, err = kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
			var sid string
			var rcv received
			err := row.Scan(&sid, &rcv.uuid, &rcv.source)
			found[sid] = rcv
			return struct{}{}, err
		}); err != nil {
			return fmt.Errorf("load replayed events: %w", err)
		}
		type conn struct{ id, name string }
		conns := map[string]conn{} // by source
		if req.ConnectionID != "" {
			var c conn
			var src string
			if err := tx.QueryRow(ctx, `SELECT id, name, source_id FROM connections WHERE id = $1`, req.ConnectionID).Scan(&c.id, &c.name, &src); err == nil {
				conns[src] = c
			} else if !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("load connection: %w", err)
			}
		} else {
			rows, err := tx.Query(ctx, `SELECT DISTINCT ON (source_id) source_id, id, name FROM connections
				WHERE destination_id = $1 ORDER BY source_id, created_at`, req.DestinationID)
			if _, err = kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
				var src string
				var c conn
				err := row.Scan(&src, &c.id, &c.name)
				conns[src] = c
				return struct{}{}, err
			}); err != nil {
				return fmt.Errorf("load connections: %w", err)
			}
		}
		var (
			appends     []eventstore.StreamAppend
			newJobs        []jobs.NewJob
			deliveryIDs []string
		)
		spacing := time.Second / time.Duration(max(1, req.RateLimit))
		for i, evID := range batch {
			rcv, ok := found[evID]
			if !ok {
				continue // cannot happen: events are immutable and the ids came from them
			}
			c := conns[rcv.source]
			deliveryID, attemptID, due := kit.NewID(), kit.NewID(), now.Add(time.Duration(i)*spacing)
			deliveryIDs = append(deliveryIDs, deliveryID)
			newJobs = append(newJobs, jobs.NewJob{DeliveryID: deliveryID, OrgID: org, EnvID: env, EventID: evID, ConnectionID: c.id,
				DestinationID: req.DestinationID, ReceivedUUID: rcv.uuid, AttemptID: attemptID, Trigger: domain.TriggerReplay, Due: due})
			appends = append(appends, eventstore.StreamAppend{
				StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
				Events: []eventstore.NewEvent{{Type: domain.EvDeliveryRequested,
					Metadata: eventstore.Metadata{Actor: "replay", CorrelationID: evID, CausationID: id},
					Payload: domain.DeliveryRequested{
						DeliveryID: deliveryID, EventID: evID, ReceivedUUID: rcv.uuid, ConnectionID: c.id, ConnectionName: c.name,
						DestinationID: req.DestinationID, DestinationName: destName, RequestURL: url, RequestMethod: method,
						AttemptID: attemptID, TriggerType: domain.TriggerReplay, RequestedAt: due, ReplayID: id,
					}}},
			})
		}
		released, err := r.Release(offset, len(batch), deliveryIDs, now)
		if err != nil {
			return err
		}
		if _, err := e.p.Store.AppendMany(ctx, tx, append([]eventstore.StreamAppend{stream(released)}, appends...)...); err != nil {
			return err
		}
		if err := jobs.Insert(ctx, tx, newJobs); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE replay_jobs SET released = $2, next_batch_at = $3 WHERE id = $1 AND released < $2`,
			id, offset+len(batch), now.Add(time.Second))
		return err
	})
}

// EventRetryResult is POST /v1/events/{id}/retry's answer.
type EventRetryResult struct {
	Retried []Attempt `json:"retried"`
	Errors  []string  `json:"errors"`
	Message string    `json:"message"`
}

// RetryEvent retries every delivery of one event whose latest attempt failed
// (dead-lettered or waiting for an automatic retry): one manual attempt
// each, as POST /v1/delivery-attempts/{id}/retry would make, without waiting
// for the outcomes. It decides from the delivery streams, not from a read
// model that may lag. A delivery that cannot be retried is reported in
// Errors and does not stop the others. Replay deliveries are not the event's
// routing and are left alone.
func (s *Service) RetryEvent(ctx context.Context, t domain.Tenant, eventID, rid string) (EventRetryResult, error) {
	if _, err := s.GetEvent(ctx, t, eventID); err != nil {
		return EventRetryResult{}, err
	}
	rows, err := s.pool.Query(ctx, `SELECT delivery_id FROM delivery_jobs WHERE event_id = $1 AND org_id = $2 AND env_id = $3 ORDER BY delivery_id`,
		eventID, t.OrgID, t.EnvID)
	ids, err := kit.CollectRows(rows, err, func(r pgx.Row) (string, error) {
		var id string
		return id, r.Scan(&id)
	})
	if err != nil {
		return EventRetryResult{}, fmt.Errorf("retry event: %w", err)
	}
	return s.retryFailedDeliveries(ctx, t, ids, rid)
}

// retryFailedDeliveries makes one manual attempt for each delivery whose
// last attempt failed (folded from its stream), reporting refusals in Errors.
func (s *Service) retryFailedDeliveries(ctx context.Context, t domain.Tenant, ids []string, rid string) (EventRetryResult, error) {
	res := EventRetryResult{Retried: []Attempt{}, Errors: []string{}}
	streams, err := s.store.LoadMany(ctx, s.pool, ids)
	if err != nil {
		return res, fmt.Errorf("retry: %w", err)
	}
	for _, id := range ids {
		d := &domain.Delivery{}
		for _, ev := range streams[id] {
			if err := d.Apply(ev.StreamVersion, ev.Type, ev.Payload); err != nil {
				return res, err
			}
		}
		last, ok := d.RetryableFailure()
		if !ok {
			continue
		}
		req := d.Requested()
		orig := Attempt{ID: last, EventID: req.EventID, ConnectionID: req.ConnectionID, DestinationID: req.DestinationID}
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
