// Package ingest turns a webhook into EventReceived, a DeliveryRequested per
// matching connection and their delivery jobs, committed in groups: source
// checks (verification, allow and deny lists, dedup), credential redaction,
// and the cache of sources and routes it looks up.
package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/wake"
)

// Params configure ingest.
type Params struct {
	Pool  *pgxpool.Pool
	Store *eventstore.Store
	Now   func() time.Time
	// MaxIngestBody bounds ingested bodies (413 above it); default 1 MiB.
	MaxIngestBody int64
	// CacheTTL is how long ingest reuses a looked-up source and its routes
	// (default 1s; negative: never). ForgetRoutes clears it at once.
	CacheTTL time.Duration
	// Sources reads sources with their decrypted verification secrets.
	Sources *resources.Registry
	// Wake wakes dispatchers after a commit that scheduled deliveries
	// (default: a notifier of its own on Pool).
	Wake *wake.Notifier
}

// Ingester receives webhooks.
type Ingester struct {
	p      Params
	pool   *pgxpool.Pool
	store  *eventstore.Store
	now    func() time.Time
	reg    *resources.Registry
	ingest *groupCommitter
	routes *ingestCache
	limits limiter
}

// New fills defaults and starts the group committer (stop it with Close).
func New(p Params) *Ingester {
	kit.Defaults(&p.Now, nil, &p.Store)
	if p.MaxIngestBody <= 0 {
		p.MaxIngestBody = 1 << 20
	}
	if p.CacheTTL == 0 {
		p.CacheTTL = time.Second
	}
	if p.Wake == nil {
		p.Wake = wake.New(p.Pool)
	}
	return &Ingester{p: p, pool: p.Pool, store: p.Store, now: func() time.Time { return p.Now().UTC() }, reg: p.Sources,
		ingest: newGroupCommitter(p.Pool, p.Store, p.Wake, 4, 256), routes: newIngestCache(p.CacheTTL, p.Now)}
}

// HandOff gives new jobs to h, a delivery engine in this process, when it
// has room for them (jobs.Handoff); the last one set is used.
func (s *Ingester) HandOff(h jobs.Handoff) { s.ingest.handoff.Store(&h) }

// ForgetRoutes drops the sources and routes ingest cached, after a
// configuration change.
func (s *Ingester) ForgetRoutes() { s.routes.clear() }

// MaxIngestBody is the largest webhook body ingest accepts, in bytes.
func (s *Ingester) MaxIngestBody() int64 { return s.p.MaxIngestBody }

// Close stops the group committer; ingest calls after Close fail.
func (s *Ingester) Close() { s.ingest.Close() }

var errClosed = errors.New("service is closed")

// IngestRequest is a webhook as it arrived at /v1/ingest/{source_id}.
type IngestRequest struct {
	SourceID string
	Method   string
	Headers  map[string][]string
	Query    map[string][]string
	// RawQuery is the query string as sent (kept byte for byte).
	RawQuery  string
	Body      []byte
	SourceIP  string
	RequestID string
}

// IngestResult is the ingest endpoint's answer.
type IngestResult struct {
	EventID  string `json:"event_id"`
	SourceID string `json:"source_id"`
	// Duplicate is set when the source's dedup recognised the webhook: it
	// is stored (marked duplicate) and not delivered.
	Duplicate bool `json:"duplicate,omitempty"`
	// OriginalEventID is, for a duplicate, the event that holds its dedup
	// key (the first one seen within the source's window).
	OriginalEventID string `json:"original_event_id,omitempty"`
}

type route struct {
	connID, connName, connStatus, destID, destName, destStatus, url, method string
	connEnabled                                                             bool
	rules                                                                   []domain.FilterRule
}

// IngestTarget is a source looked up for ingest, with its routes: what the
// webhook will be checked against and fanned out to.
type IngestTarget struct {
	src    resources.Source
	st     resources.SourceState
	routes []route
	// envLimit is the environment's ingest limit (webhooks/s; 0: none).
	envLimit int
}

// LookupIngest loads a source and its routes in one round trip, before the
// body is read: an unknown source costs no upload. ENotFound for an unknown
// or malformed id.
func (s *Ingester) LookupIngest(ctx context.Context, sourceID string) (*IngestTarget, error) {
	if !kit.ValidID(sourceID) {
		return nil, kit.NotFound("Source")
	}
	t, gen := s.routes.get(sourceID)
	if t != nil {
		return t, nil
	}
	rows, err := s.pool.Query(ctx, lookupSQL, sourceID)
	var tg IngestTarget
	found := false
	if err == nil {
		for rows.Next() {
			var r route
			var cID, cName, cStatus, dID, dName, dStatus, url, method *string
			var cEnabled *bool
			var rules []byte
			tg.src, tg.st, err = s.reg.ScanSourceState(rows, &cID, &cName, &cEnabled, &cStatus, &rules, &dID, &dName, &dStatus, &url, &method, &tg.envLimit)
			if err != nil {
				break
			}
			found = true
			if cID == nil || dID == nil {
				continue
			}
			r.connID, r.connName, r.connEnabled, r.connStatus = *cID, *cName, *cEnabled, *cStatus
			r.destID, r.destName, r.destStatus, r.url, r.method = *dID, *dName, *dStatus, *url, *method
			if err = json.Unmarshal(rules, &r.rules); err != nil {
				err = fmt.Errorf("connection %s filter rules: %w", r.connID, err)
				break
			}
			tg.routes = append(tg.routes, r)
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ingest: look up source: %w", err)
	}
	if !found {
		return nil, kit.NotFound("Source")
	}
	s.routes.put(sourceID, &tg, gen)
	return &tg, nil
}

// RateLimited is the error of a webhook over a rate limit; Wait is how
// long until it would pass (the Retry-After).
type RateLimited struct {
	Wait time.Duration
	err  error
}

func (e *RateLimited) Error() string { return e.err.Error() }
func (e *RateLimited) Unwrap() error { return e.err }

// AdmitRate takes a token from the source's ingest bucket, before the body
// is read: *RateLimited (429) when the source's limit is reached. The
// environment's bucket is taken after the webhook was admitted (IP lists,
// signature; see Ingest), so unauthenticated requests to one source cannot
// use up the limit its environment's other sources share.
func (s *Ingester) AdmitRate(tg *IngestTarget) error {
	if tg.st.RateLimit <= 0 {
		return nil
	}
	if ok, wait := s.limits.take(s.now(), limit{"source:" + tg.src.ID, tg.st.RateLimit}); !ok {
		return &RateLimited{Wait: wait, err: domain.Errorf(domain.ERateLimited,
			"Rate limit exceeded: this source accepts at most %d webhooks/s; retry after the Retry-After seconds", tg.st.RateLimit)}
	}
	return nil
}

// admitEnvRate takes a token from the environment's ingest bucket.
func (s *Ingester) admitEnvRate(tg *IngestTarget) error {
	if tg.envLimit <= 0 {
		return nil
	}
	if ok, wait := s.limits.take(s.now(), limit{"env:" + tg.src.EnvID, tg.envLimit}); !ok {
		return &RateLimited{Wait: wait, err: domain.Errorf(domain.ERateLimited,
			"Rate limit exceeded: this source's environment accepts at most %d webhooks/s; retry after the Retry-After seconds", tg.envLimit)}
	}
	return nil
}

// Ingest runs the source's checks in hookstream's order (IP lists, then the
// signature, then dedup) and stores the webhook (EventReceived) with one
// DeliveryRequested per matching connection, in one group-committed
// transaction, returning after commit. A paused source, connection or
// destination still gets its deliveries (the dispatcher holds them until it
// is active again); a disabled connection or destination gets none, and the
// event records why (a disabled source refuses the webhook). tg comes from
// LookupIngest.
func (s *Ingester) Ingest(ctx context.Context, tg *IngestTarget, in IngestRequest) (IngestResult, error) {
	src, st, routes := tg.src, tg.st, tg.routes
	in.SourceID = src.ID
	org, env := src.OrgID, src.EnvID
	verification, err := s.admit(st, in)
	if err != nil {
		return IngestResult{}, err
	}
	if err := s.admitEnvRate(tg); err != nil {
		return IngestResult{}, err
	}
	// Verification saw the real values; nothing after it does. Credentials a
	// browser or a client attaches are never stored, nor given to filters.
	rawHeaders := in.Headers
	// What PostgreSQL text cannot hold is shown with U+FFFD, never a reason
	// to refuse (and so lose) a webhook; its exact bytes are kept beside, in
	// base64 (headers_b64, raw_query_b64).
	redacted := redactIngestHeaders(in.Headers, st)
	headersB64 := exactValues(redacted)
	in.Headers = kit.StorableValues(redacted)
	in.Query = kit.StorableValues(in.Query)
	rawQuery, rawQueryB64 := in.RawQuery, ""
	if !kit.Storable(rawQuery) {
		rawQuery, rawQueryB64 = "", base64.StdEncoding.EncodeToString([]byte(in.RawQuery))
	}
	in.Method = kit.StorableText(in.Method)
	contentType := first(in.Headers, "Content-Type")
	input := filterInput(in, contentType, routes)
	now := s.now()
	eventID := kit.NewID()
	receivedUUID := uuid.Must(uuid.NewV7())
	meta := eventstore.Metadata{Actor: "ingest", RequestID: in.RequestID, CorrelationID: eventID}
	sent := &jobs.Sent{BodyB64: base64.StdEncoding.EncodeToString(in.Body), ContentType: contentType}
	appends, newJobs, skipped := fanOut(tg, in, input, eventID, receivedUUID.String(), sent, now)
	received := domain.EventReceived{
		EventID: eventID, SourceID: in.SourceID, SourceName: src.Name, SourceSlug: src.Slug, Method: in.Method,
		Headers: in.Headers, Query: in.Query, RawQuery: rawQuery, RawQueryB64: rawQueryB64, HeadersB64: headersB64,
		ContentType: contentType, SourceIP: in.SourceIP,
		BodyB64: sent.BodyB64, BodySize: len(in.Body), Deliveries: len(appends), ReceivedAt: now,
		VerificationStatus: verification, DedupStatus: "unique", Skipped: skipped,
	}
	eventAppend := func(e domain.EventReceived) eventstore.StreamAppend {
		return eventstore.StreamAppend{StreamType: domain.StreamEvent, StreamID: eventID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{ID: receivedUUID, Type: domain.EvEventReceived, Payload: e, Projected: e.WithoutBodies(), Metadata: meta}}}
	}
	var key string
	var dedup bool
	if st.DedupEnabled {
		key, dedup = domain.DedupKey(st.DedupStrategy, st.DedupField, rawHeaders, in.Body)
	}
	if !dedup {
		if err := s.ingest.Append(ctx, append([]eventstore.StreamAppend{eventAppend(received)}, appends...), newJobs); err != nil {
			return IngestResult{}, fmt.Errorf("ingest: append: %w", err)
		}
		return IngestResult{EventID: eventID, SourceID: in.SourceID}, nil
	}
	received.DedupHash = secrets.Fingerprint(st.DedupStrategy + ":" + key)
	dup := received
	dup.DedupStatus, dup.Deliveries, dup.Skipped = "duplicate", 0, nil
	for _, r := range routes {
		dup.Skipped = append(dup.Skipped, domain.SkippedRoute{ConnectionID: r.connID, DestinationID: r.destID, Reason: "duplicate"})
	}
	claim := dedupClaim{SourceID: in.SourceID, Key: key, EventID: eventID, Now: now, Expires: now.Add(time.Duration(st.DedupWindow) * time.Second)}
	duplicate, original, err := s.ingest.AppendDedup(ctx, append([]eventstore.StreamAppend{eventAppend(received)}, appends...), newJobs, claim,
		[]eventstore.StreamAppend{eventAppend(dup)})
	if err != nil {
		return IngestResult{}, fmt.Errorf("ingest: append: %w", err)
	}
	return IngestResult{EventID: eventID, SourceID: in.SourceID, Duplicate: duplicate, OriginalEventID: original}, nil
}

// anyRules reports whether a route filters on the webhook.
func anyRules(routes []route) bool {
	for _, r := range routes {
		if len(r.rules) > 0 {
			return true
		}
	}
	return false
}

// filterInput is what connection filters see of a webhook; the payload is
// decoded only when a route has rules and the body may be JSON.
func filterInput(in IngestRequest, contentType string, routes []route) domain.FilterInput {
	input := domain.FilterInput{Headers: map[string]string{}, Method: in.Method, ContentType: contentType, SourceIP: in.SourceIP}
	for k, v := range in.Headers {
		input.Headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	if mt, _, _ := mime.ParseMediaType(contentType); len(in.Body) > 0 && (mt == "" || strings.Contains(mt, "json")) && anyRules(routes) {
		var payload any
		if json.Unmarshal(in.Body, &payload) == nil {
			input.Payload = payload
		} // a body that is not JSON matches no payload rule
	}
	return input
}

// fanOut is a webhook's deliveries: a DeliveryRequested stream and a job per
// route that takes it, and the routes skipped with why.
func fanOut(tg *IngestTarget, in IngestRequest, input domain.FilterInput, eventID, receivedUUID string, sent *jobs.Sent, now time.Time) (
	appends []eventstore.StreamAppend, newJobs []jobs.NewJob, skipped []domain.SkippedRoute) {
	org, env := tg.src.OrgID, tg.src.EnvID
	for _, r := range tg.routes {
		reason := ""
		switch {
		case !r.connEnabled || r.connStatus == "disabled":
			reason = "connection disabled"
		case r.destStatus == "disabled":
			reason = "destination disabled"
		case !domain.MatchFilter(r.rules, input):
			reason = "filtered"
		}
		if reason != "" {
			skipped = append(skipped, domain.SkippedRoute{ConnectionID: r.connID, DestinationID: r.destID, Reason: reason})
			continue
		}
		deliveryID, attemptID := kit.NewID(), kit.NewID()
		newJobs = append(newJobs, jobs.NewJob{DeliveryID: deliveryID, OrgID: org, EnvID: env, EventID: eventID, ConnectionID: r.connID,
			DestinationID: r.destID, ReceivedUUID: receivedUUID, AttemptID: attemptID, Trigger: domain.TriggerInitial, Due: now, Sent: sent})
		requested := domain.DeliveryRequested{
			DeliveryID: deliveryID, EventID: eventID, ReceivedUUID: receivedUUID,
			ConnectionID: r.connID, ConnectionName: r.connName, DestinationID: r.destID, DestinationName: r.destName,
			RequestURL: r.url, RequestMethod: r.method, AttemptID: attemptID, TriggerType: domain.TriggerInitial, RequestedAt: now,
		}
		appends = append(appends, eventstore.StreamAppend{
			StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvDeliveryRequested, Metadata: eventstore.Metadata{Actor: "ingest", RequestID: in.RequestID, CorrelationID: eventID, CausationID: receivedUUID},
				Payload: requested, Projected: requested}},
		})
	}
	return appends, newJobs, skipped
}

// admit checks a webhook against its source: enabled, the sender's address
// allowed, the signature verified when verification is on. It returns the
// event's verification status.
func (s *Ingester) admit(st resources.SourceState, in IngestRequest) (string, error) {
	if st.Status == "disabled" {
		return "", domain.Errorf(domain.EConflict, "Source is disabled")
	}
	if reason := domain.CheckIP(in.SourceIP, st.Allow, st.Deny); reason != "" {
		return "", domain.Errorf(domain.EForbidden, "%s", reason)
	}
	if !st.VerifyEnabled {
		return "none", nil
	}
	if st.SecretErr != nil {
		// Fail closed: a webhook is never accepted unverified.
		return "", fmt.Errorf("ingest: %w", st.SecretErr)
	}
	if err := verifySignature(st, in, s.now()); err != nil {
		return "", err
	}
	return "verified", nil
}

// lookupSQL reads a source and its routes in one round trip.
const lookupSQL = `SELECT src.*, c.id, c.name, c.enabled, c.status, c.filter_rules, d.id, d.name, d.status, d.url, d.method,
			coalesce(env.ingest_rate_limit, 0)
		FROM (SELECT ` + resources.SourceCols + ` FROM sources WHERE id = $1) src
		LEFT JOIN environments env ON env.id = src.env_id
		LEFT JOIN connections c ON c.source_id = src.id LEFT JOIN destinations d ON d.id = c.destination_id
		ORDER BY c.created_at, c.id`

// HotStatements are the statements every ingest runs (see delivery.HotStatements).
func HotStatements() []string {
	return []string{lookupSQL, jobs.InsertSQL, jobs.InsertTakeSQL, eventstore.AppendKnownSQL, eventstore.AppendSQL}
}

// exactValues returns, base64-encoded, the values of the headers that text
// cannot hold (nil when every value can): the bytes StorableValues replaces.
func exactValues(h map[string][]string) map[string][]string {
	var out map[string][]string
	for k, vs := range h {
		exact := true
		for _, v := range vs {
			exact = exact && kit.Storable(v)
		}
		if exact && kit.Storable(k) {
			continue
		}
		if out == nil {
			out = map[string][]string{}
		}
		enc := make([]string, len(vs))
		for i, v := range vs {
			enc[i] = base64.StdEncoding.EncodeToString([]byte(v))
		}
		out[kit.StorableText(k)] = enc
	}
	return out
}
