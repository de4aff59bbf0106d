package projections

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// The batch forms of DeliveryAttempts and Events: the same rows as folding
// the events one at a time (the rebuild tests hold them to that), written by
// one statement per table per batch. Rows depend on each other in one
// direction only — an event's row before its status, a delivery's helper row
// before its attempts, attempts before the updates that mark them — so the
// statements run in that order. Each statement that joins the batch's
// arrays to a table also filters the table by key (= ANY(array)), so the
// planner can look the rows up by key: it takes unnest for a handful of
// rows. On a young (never analyzed) table it still chose a sequential scan
// of all of it; the projector's transaction prices those out
// (projectorSettings). Renames are the exception (a rename applies
// to the rows before it, not after), so a batch is cut at each rename.

// DeliveryAttemptsBatch folds evs (commit order) into delivery_attempts.
func DeliveryAttemptsBatch(evs []eventstore.Event) ([]eventstore.Statement, error) {
	var out []eventstore.Statement
	var seg attemptsSegment
	for _, e := range evs {
		switch e.Type {
		case domain.EvDestinationCreated, domain.EvDestinationUpdated, domain.EvConnectionCreated, domain.EvConnectionUpdated:
			out = append(out, seg.statements()...)
			seg = attemptsSegment{}
			s, err := DeliveryAttempts(e)
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		default:
			if err := seg.add(e); err != nil {
				return nil, err
			}
		}
	}
	return append(out, seg.statements()...), nil
}

// attemptsSegment collects a run of delivery events between renames.
type attemptsSegment struct {
	// projected_deliveries rows
	pdDelivery, pdEvent, pdConn, pdDest, pdConnName, pdDestName, pdReplay []string
	// pending attempts (DeliveryRequested, RetryRequested)
	pID, pOrg, pEnv, pDelivery, pURL, pMethod, pTrigger []string
	pAt                                                 []time.Time
	pNum                                                []int32
	// attempts made (DeliveryAttempted), last one per attempt id
	attempted map[string]int
	a         []attemptRow
	// updates of attempts made above: next retry times, then dead letters
	// (the last of each per attempt)
	retryAt map[string]time.Time
	dlqAt   map[string]time.Time
	// renames and anything else, one event at a time, after them
	after []eventstore.Statement
}

type attemptRow struct {
	org, env, delivery string
	pos                int64 // the DeliveryAttempted's position: its headers and body stay in the log
	p                  domain.DeliveryAttempted
}

func (s *attemptsSegment) add(e eventstore.Event) error {
	switch e.Type {
	case domain.EvDeliveryRequested:
		p, err := payload[domain.DeliveryRequested](e)
		if err != nil {
			return fmt.Errorf("project %s %s into delivery_attempts: %w", e.Type, e.EventID, err)
		}
		s.pdDelivery, s.pdEvent, s.pdConn, s.pdDest = append(s.pdDelivery, p.DeliveryID), append(s.pdEvent, p.EventID), append(s.pdConn, p.ConnectionID), append(s.pdDest, p.DestinationID)
		s.pdConnName, s.pdDestName, s.pdReplay = append(s.pdConnName, p.ConnectionName), append(s.pdDestName, p.DestinationName), append(s.pdReplay, p.ReplayID)
		s.pending(e, p.AttemptID, p.DeliveryID, 1, p.TriggerType, p.RequestURL, p.RequestMethod, p.RequestedAt)
	case domain.EvRetryRequested:
		p, err := payload[domain.RetryRequested](e)
		if err != nil {
			return fmt.Errorf("project %s %s into delivery_attempts: %w", e.Type, e.EventID, err)
		}
		s.pending(e, p.AttemptID, e.StreamID, p.AttemptNumber, domain.TriggerManual, p.RequestURL, p.RequestMethod, p.RequestedAt)
	case domain.EvDeliveryAttempted:
		p, err := payload[domain.DeliveryAttempted](e)
		if err != nil {
			return fmt.Errorf("project %s %s into delivery_attempts: %w", e.Type, e.EventID, err)
		}
		if s.attempted == nil {
			s.attempted = map[string]int{}
		}
		row := attemptRow{org: e.OrgID, env: e.EnvID, delivery: e.StreamID, pos: e.GlobalPosition, p: p}
		if i, ok := s.attempted[p.AttemptID]; ok {
			s.a[i] = row // the later recording wins, as one at a time
		} else {
			s.attempted[p.AttemptID] = len(s.a)
			s.a = append(s.a, row)
		}
	case domain.EvRetryScheduled:
		p, err := payload[domain.RetryScheduled](e)
		if err != nil {
			return fmt.Errorf("project %s %s into delivery_attempts: %w", e.Type, e.EventID, err)
		}
		if s.retryAt == nil {
			s.retryAt = map[string]time.Time{}
		}
		s.retryAt[p.AfterAttemptID] = p.NotBefore
	case domain.EvMovedToDLQ:
		p, err := payload[domain.MovedToDLQ](e)
		if err != nil {
			return fmt.Errorf("project %s %s into delivery_attempts: %w", e.Type, e.EventID, err)
		}
		if s.dlqAt == nil {
			s.dlqAt = map[string]time.Time{}
		}
		s.dlqAt[p.AttemptID] = p.DLQAt
	default:
		stmts, err := DeliveryAttempts(e)
		if err != nil {
			return err
		}
		s.after = append(s.after, stmts...)
	}
	return nil
}

func (s *attemptsSegment) pending(e eventstore.Event, id, delivery string, num int, trigger, url, method string, at time.Time) {
	s.pID, s.pOrg, s.pEnv, s.pDelivery = append(s.pID, id), append(s.pOrg, e.OrgID), append(s.pEnv, e.EnvID), append(s.pDelivery, delivery)
	s.pURL, s.pMethod, s.pTrigger = append(s.pURL, url), append(s.pMethod, method), append(s.pTrigger, trigger)
	s.pAt, s.pNum = append(s.pAt, at), append(s.pNum, int32(num))
}

// statements writes the segment set-based. An attempt made in the segment
// is written once: its pending row (same segment) and its next retry time
// (the RetryScheduled that follows it) go into the one INSERT of the attempt,
// with the values the three writes one after another would leave.
func (s *attemptsSegment) statements() []eventstore.Statement {
	var out eventstore.Statements
	pendingAt := s.foldPending()
	if len(s.pdDelivery) > 0 {
		out.Add(`INSERT INTO projected_deliveries (delivery_id, event_id, connection_id, destination_id, connection_name, destination_name, replay_id)
			SELECT d, ev, c, dst, cn, dn, NULLIF(r, '') FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
				AS u(d, ev, c, dst, cn, dn, r)
			ON CONFLICT (delivery_id) DO NOTHING`, s.pdDelivery, s.pdEvent, s.pdConn, s.pdDest, s.pdConnName, s.pdDestName, s.pdReplay)
	}
	if len(s.pID) > 0 {
		out.Add(`INSERT INTO delivery_attempts (id, org_id, env_id, delivery_id, event_id, connection_id, destination_id,
				request_url, request_method, status, created_at, attempt_number, trigger_type, connection_name, destination_name, replay_id)
			SELECT u.id, u.org, u.env, d.delivery_id, d.event_id, d.connection_id, d.destination_id, u.url, u.method, 'pending', u.at, u.num, u.trig,
				d.connection_name, d.destination_name, d.replay_id
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::int[], $9::text[])
				AS u(id, org, env, delivery, url, method, at, num, trig)
			CROSS JOIN LATERAL (SELECT * FROM projected_deliveries x WHERE x.delivery_id = u.delivery AND x.delivery_id = ANY($4::text[])) d
			ON CONFLICT (id) DO NOTHING`, s.pID, s.pOrg, s.pEnv, s.pDelivery, s.pURL, s.pMethod, s.pAt, s.pNum, s.pTrigger)
	}
	if n := len(s.a); n > 0 {
		id, org, env, delivery, url, method, status, trigger := make([]string, n), make([]string, n), make([]string, n), make([]string, n),
			make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		pos := make([]int64, n)
		bodySize, duration, number := make([]int32, n), make([]int32, n), make([]int32, n)
		respStatus := make([]*int32, n)
		errMsg := make([]*string, n)
		created := make([]time.Time, n)
		nextRetry := make([]*time.Time, n)
		for i, r := range s.a {
			p := r.p
			id[i], org[i], env[i], delivery[i], url[i], method[i] = p.AttemptID, r.org, r.env, r.delivery, p.RequestURL, p.RequestMethod
			pos[i], status[i], trigger[i] = r.pos, p.Status, p.TriggerType
			bodySize[i], duration[i], number[i] = int32(p.RequestBodySize), int32(p.DurationMS), int32(p.AttemptNumber)
			if p.ResponseStatus != nil {
				v := int32(*p.ResponseStatus)
				respStatus[i] = &v
			}
			errMsg[i], created[i] = p.Error, p.StartedAt
			if at, ok := pendingAt[p.AttemptID]; ok {
				created[i] = at // the pending row's creation time, which the upsert keeps
			}
			if at, ok := s.retryAt[p.AttemptID]; ok {
				nextRetry[i] = &at
				delete(s.retryAt, p.AttemptID)
			}
		}
		out.Add(`INSERT INTO delivery_attempts (id, org_id, env_id, delivery_id, event_id, connection_id, destination_id,
				request_url, request_method, attempted_pos, request_body_size, response_status,
				duration_ms, status, error, created_at, attempt_number, trigger_type, connection_name, destination_name, replay_id, next_retry_at)
			SELECT u.id, u.org, u.env, d.delivery_id, d.event_id, d.connection_id, d.destination_id, u.url, u.method, u.pos, u.bs, u.rs,
				u.dur, u.st, u.err, u.at, u.num, u.trig, d.connection_name, d.destination_name, d.replay_id, u.nra
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::int[], $9::int[],
				$10::int[], $11::text[], $12::text[], $13::timestamptz[], $14::int[], $15::text[], $16::timestamptz[])
				AS u(id, org, env, delivery, url, method, pos, bs, rs, dur, st, err, at, num, trig, nra)
			CROSS JOIN LATERAL (SELECT * FROM projected_deliveries x WHERE x.delivery_id = u.delivery AND x.delivery_id = ANY($4::text[])) d
			ON CONFLICT (id) DO UPDATE SET request_url = excluded.request_url, request_method = excluded.request_method,
				attempted_pos = excluded.attempted_pos, request_body_size = excluded.request_body_size,
				response_status = excluded.response_status, duration_ms = excluded.duration_ms, status = excluded.status,
				error = excluded.error, attempt_number = excluded.attempt_number, trigger_type = excluded.trigger_type,
				next_retry_at = coalesce(excluded.next_retry_at, delivery_attempts.next_retry_at)`,
			id, org, env, delivery, url, method, pos, bodySize, respStatus, duration, status, errMsg, created, number, trigger, nextRetry)
	}
	if ids, at := keysAndTimes(s.retryAt); len(ids) > 0 {
		out.Add(`UPDATE delivery_attempts a SET next_retry_at = u.at FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE a.id = u.id AND a.id = ANY($1::text[])`, ids, at)
	}
	if ids, at := keysAndTimes(s.dlqAt); len(ids) > 0 {
		out.Add(`UPDATE delivery_attempts a SET is_dlq = 1, dlq_at = u.at, next_retry_at = NULL FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE a.id = u.id AND a.id = ANY($1::text[])`, ids, at)
	}
	return append(out, s.after...)
}

func keysAndTimes(m map[string]time.Time) ([]string, []time.Time) {
	ids := make([]string, 0, len(m))
	at := make([]time.Time, 0, len(m))
	for id, t := range m {
		ids, at = append(ids, id), append(at, t)
	}
	return ids, at
}

// EventsBatch folds evs (commit order) into events_view: new events first,
// then every delivery outcome (the latest per delivery), then the status of
// each event they belong to.
func EventsBatch(evs []eventstore.Event) ([]eventstore.Statement, error) {
	var out eventstore.Statements
	var (
		id, org, env, src, srcName, srcSlug, method, ctype, ip, status, vstatus, dstatus, dhash []string
		size, deliveries                                                                        []int32
		received                                                                                []time.Time
	)
	type outcome struct {
		event, outcome string
		version        int64
	}
	outcomes := map[string]outcome{}
	var order []string // deliveries with an outcome in the batch, first seen first
	for _, e := range evs {
		switch e.Type {
		case domain.EvEventReceived:
			// Headers, query and body stay in the log (GET /v1/events/{id}
			// reads them there): they are skipped, not decoded.
			var p struct {
				domain.EventReceived
				Headers    json.RawMessage `json:"headers"`
				HeadersB64 json.RawMessage `json:"headers_b64"`
				Query      json.RawMessage `json:"query"`
				BodyB64    json.RawMessage `json:"body_b64"`
			}
			if d, ok := e.Decoded.(domain.EventReceived); ok {
				p.EventReceived = d
			} else if err := json.Unmarshal(e.Payload, &p); err != nil {
				return nil, fmt.Errorf("project %s: %w", e.EventID, err)
			}
			st := "received"
			if p.Deliveries > 0 {
				st = "processing"
			}
			id, org, env, src, srcName, srcSlug = append(id, p.EventID), append(org, e.OrgID), append(env, e.EnvID), append(src, p.SourceID), append(srcName, p.SourceName), append(srcSlug, p.SourceSlug)
			method, ctype, ip, status = append(method, p.Method), append(ctype, p.ContentType), append(ip, p.SourceIP), append(status, st)
			vstatus, dstatus, dhash = append(vstatus, p.VerificationStatus), append(dstatus, p.DedupStatus), append(dhash, p.DedupHash)
			size, deliveries, received = append(size, int32(p.BodySize)), append(deliveries, int32(p.Deliveries)), append(received, p.ReceivedAt)
		case domain.EvDeliveryAttempted, domain.EvMovedToDLQ:
			stmts, err := Events(e) // decides whether the event changes an outcome
			if err != nil {
				return nil, err
			}
			if len(stmts) == 0 {
				continue
			}
			o := outcome{event: stmts[0].Args[1].(string), outcome: stmts[0].Args[2].(string), version: stmts[0].Args[3].(int64)}
			if cur, ok := outcomes[e.StreamID]; !ok || cur.version < o.version {
				if !ok {
					order = append(order, e.StreamID)
				}
				outcomes[e.StreamID] = o
			}
		}
	}
	// An event received in this batch has all its outcomes so far in it (the
	// log orders them after it): its status is written with its row, and
	// the status UPDATE (never HOT: status is indexed) is left to events
	// received earlier. At 150 webhooks/s most deliveries finish within the
	// projector's batch, so most events are written once.
	inBatch := make(map[string]int, len(id))
	for i, e := range id {
		inBatch[e] = i
	}
	type counts struct{ dlq, success int32 }
	decided := map[string]*counts{}
	var statusOf []string // events received earlier whose status the UPDATE re-derives
	for _, d := range order {
		o := outcomes[d]
		if _, ok := inBatch[o.event]; !ok {
			statusOf = append(statusOf, o.event)
			continue
		}
		c := decided[o.event]
		if c == nil {
			c = &counts{}
			decided[o.event] = c
		}
		switch o.outcome {
		case "dlq":
			c.dlq++
		case "success":
			c.success++
		}
	}
	for e, c := range decided { // the same CASE as the UPDATE below
		i := inBatch[e]
		switch {
		case c.dlq > 0:
			status[i] = "failed"
		case c.success >= deliveries[i]:
			status[i] = "delivered"
		default:
			status[i] = "processing"
		}
	}
	if len(id) > 0 {
		// A conflict is this batch projected again (its status then is the same).
		out.Add(`INSERT INTO events_view (id, org_id, env_id, source_id, source_name, source_slug, method, content_type,
				source_ip, payload_size, status, delivery_count, received_at, verification_status, dedup_status, dedup_hash)
			SELECT id, org, env, src, sn, ss, m, NULLIF(ct, ''), NULLIF(ip, ''), sz, st, dc, rat,
				coalesce(NULLIF(vs, ''), 'none'), coalesce(NULLIF(ds, ''), 'unique'), NULLIF(dh, '')
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
				$10::int[], $11::text[], $12::int[], $13::timestamptz[], $14::text[], $15::text[], $16::text[])
				AS u(id, org, env, src, sn, ss, m, ct, ip, sz, st, dc, rat, vs, ds, dh)
			ON CONFLICT (id) DO UPDATE SET status = excluded.status WHERE events_view.status IS DISTINCT FROM excluded.status`,
			id, org, env, src, srcName, srcSlug, method, ctype, ip, size, status, deliveries, received, vstatus, dstatus, dhash)
	}
	if len(order) > 0 {
		dl, ev, oc := make([]string, len(order)), make([]string, len(order)), make([]string, len(order))
		ver := make([]int64, len(order))
		for i, d := range order {
			o := outcomes[d]
			dl[i], ev[i], oc[i], ver[i] = d, o.event, o.outcome, o.version
		}
		out.Add(`INSERT INTO event_delivery_outcomes (delivery_id, event_id, outcome, version)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
			ON CONFLICT (event_id, delivery_id) DO UPDATE SET outcome = excluded.outcome, version = excluded.version
			WHERE event_delivery_outcomes.version < excluded.version`, dl, ev, oc, ver)
		// Each event is looked up by key (LATERAL): a join over the arrays
		// would let the planner scan whole tables for a few hundred rows.
	}
	if len(statusOf) > 0 {
		out.Add(`UPDATE events_view v SET status = CASE
				WHEN o.dlq > 0 THEN 'failed'
				WHEN o.success >= v.delivery_count THEN 'delivered'
				ELSE 'processing' END
			FROM (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id)) x
			CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE outcome = 'dlq') AS dlq, count(*) FILTER (WHERE outcome = 'success') AS success
			      FROM event_delivery_outcomes WHERE event_id = x.id) o
			WHERE v.id = x.id AND v.id = ANY($1::text[])`, statusOf)
	}
	return out, nil
}

// foldPending takes out of the pending rows those of attempts made in this
// segment, returning their creation times: the attempt's INSERT writes them.
func (s *attemptsSegment) foldPending() map[string]time.Time {
	if len(s.attempted) == 0 || len(s.pID) == 0 {
		return nil
	}
	folded := map[string]time.Time{}
	kept := 0
	for i, id := range s.pID {
		if _, made := s.attempted[id]; made {
			if _, seen := folded[id]; !seen {
				folded[id] = s.pAt[i]
			}
			continue
		}
		s.pID[kept], s.pOrg[kept], s.pEnv[kept], s.pDelivery[kept] = id, s.pOrg[i], s.pEnv[i], s.pDelivery[i]
		s.pURL[kept], s.pMethod[kept], s.pTrigger[kept], s.pAt[kept], s.pNum[kept] = s.pURL[i], s.pMethod[i], s.pTrigger[i], s.pAt[i], s.pNum[i]
		kept++
	}
	s.pID, s.pOrg, s.pEnv, s.pDelivery = s.pID[:kept], s.pOrg[:kept], s.pEnv[:kept], s.pDelivery[:kept]
	s.pURL, s.pMethod, s.pTrigger, s.pAt, s.pNum = s.pURL[:kept], s.pMethod[:kept], s.pTrigger[:kept], s.pAt[:kept], s.pNum[:kept]
	return folded
}
