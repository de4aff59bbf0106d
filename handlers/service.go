package handlers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/kit"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// ServiceParams configure the application service behind the API.
type ServiceParams struct {
	Pool      *pgxpool.Pool
	Store     *eventstore.Store
	Log       *slog.Logger
	Now       func() time.Time
	PublicURL string // base of ingest URLs, e.g. http://127.0.0.1:8080
	// MaxIngestBody bounds ingested bodies (413 above it); default 1 MiB.
	MaxIngestBody int64
	// Secrets encrypts signing and verification secrets, credential headers
	// and URL userinfo at rest; without a key, storing one is refused.
	Secrets *secretbox.Keyring
	// IngestCacheTTL is how long ingest reuses a looked-up source and its
	// routes (default 1s; negative: never). Configuration writes through
	// this service clear it at once; another process's within the TTL.
	IngestCacheTTL time.Duration
	// Outbound refuses destination URLs whose host is a disallowed address
	// literal (the zero policy refuses every non-public range).
	Outbound outbound.Policy
}

// Service is the application layer: every API call is one method here.
type Service struct {
	p      ServiceParams
	pool   *pgxpool.Pool
	store  *eventstore.Store
	now    func() time.Time
	ingest *groupCommitter
	routes *ingestCache
}

// NewService fills defaults and returns the service.
func NewService(p ServiceParams) *Service {
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.MaxIngestBody <= 0 {
		p.MaxIngestBody = 1 << 20
	}
	if p.IngestCacheTTL == 0 {
		p.IngestCacheTTL = time.Second
	}
	if p.Store == nil {
		p.Store = eventstore.New(p.Now)
	}
	return &Service{p: p, pool: p.Pool, store: p.Store, now: func() time.Time { return p.Now().UTC() },
		ingest: newGroupCommitter(p.Pool, p.Store, 4, 256), routes: newIngestCache(p.IngestCacheTTL, p.Now)}
}

// ForgetRoutes drops the sources and routes ingest cached, after a change
// made outside this service (the engine disabling a destination).
func (s *Service) ForgetRoutes() { s.routes.clear() }

// MaxIngestBody is the largest webhook body ingest accepts, in bytes.
func (s *Service) MaxIngestBody() int64 { return s.p.MaxIngestBody }

// Close stops the ingest group committer; ingest calls after Close fail.
func (s *Service) Close() { s.ingest.Close() }

var errClosed = errors.New("service is closed")

// ---- ingest ----

// IngestRequest is a webhook as it arrived at /v1/ingest/{source_id}.
type IngestRequest struct {
	SourceID  string
	Method    string
	Headers   map[string][]string
	Query     map[string][]string
	Body      []byte
	SourceIP  string
	RequestID string
}

// IngestResult is the ingest endpoint's answer.
type IngestResult struct {
	EventID  string `json:"event_id"`
	SourceID string `json:"source_id"`
}

type route struct {
	connID, connName, connStatus, destID, destName, destStatus, url, method string
	connEnabled                                                             bool
	rules                                                                   []domain.FilterRule
}

// IngestTarget is a source looked up for ingest, with its routes: what the
// webhook will be checked against and fanned out to.
type IngestTarget struct {
	src    Source
	st     srcState
	routes []route
}

// LookupIngest loads a source and its routes in one round trip, before the
// body is read: an unknown source costs no upload. ENotFound for an unknown
// or malformed id.
func (s *Service) LookupIngest(ctx context.Context, sourceID string) (*IngestTarget, error) {
	if !kit.ValidID(sourceID) {
		return nil, kit.NotFound("Source")
	}
	t, gen := s.routes.get(sourceID)
	if t != nil {
		return t, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT src.*, c.id, c.name, c.enabled, c.status, c.filter_rules, d.id, d.name, d.status, d.url, d.method
		FROM (SELECT `+sourceCols+` FROM sources WHERE id = $1) src
		LEFT JOIN connections c ON c.source_id = src.id LEFT JOIN destinations d ON d.id = c.destination_id
		ORDER BY c.created_at, c.id`, sourceID)
	var tg IngestTarget
	found := false
	if err == nil {
		for rows.Next() {
			var r route
			var cID, cName, cStatus, dID, dName, dStatus, url, method *string
			var cEnabled *bool
			var rules []byte
			tg.src, tg.st, err = s.scanSourceState(rows, &cID, &cName, &cEnabled, &cStatus, &rules, &dID, &dName, &dStatus, &url, &method)
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

// Ingest runs the source's checks in hookstream's order (IP lists, then the
// signature, then dedup) and stores the webhook (EventReceived) with one
// DeliveryRequested per matching connection, in one group-committed
// transaction, returning after commit. A paused connection still gets its
// delivery (the dispatcher holds it); a disabled connection or destination
// gets none, and the event records why. tg comes from LookupIngest.
func (s *Service) Ingest(ctx context.Context, tg *IngestTarget, in IngestRequest) (IngestResult, error) {
	src, st, routes := tg.src, tg.st, tg.routes
	in.SourceID = src.ID
	org, env := src.OrgID, src.EnvID
	if st.Status == "disabled" {
		return IngestResult{}, domain.Errorf(domain.EConflict, "Source is disabled")
	}
	if reason := domain.CheckIP(in.SourceIP, st.Allow, st.Deny); reason != "" {
		return IngestResult{}, domain.Errorf(domain.EForbidden, "%s", reason)
	}
	verification := "none"
	if st.VerifyEnabled && st.secretErr != nil {
		// Fail closed: a webhook is never accepted unverified.
		return IngestResult{}, fmt.Errorf("ingest: %w", st.secretErr)
	}
	if st.VerifyEnabled {
		if err := verifySignature(st, in, s.now()); err != nil {
			return IngestResult{}, err
		}
		verification = "verified"
	}
	// Verification saw the real values; nothing after it does. Credentials a
	// browser or a client attaches are never stored, nor given to filters.
	rawHeaders := in.Headers
	// What PostgreSQL text cannot hold is replaced, never a reason to refuse
	// (and so lose) a webhook.
	in.Headers = kit.StorableValues(redactIngestHeaders(in.Headers, st))
	in.Query = kit.StorableValues(in.Query)
	in.Method = kit.StorableText(in.Method)
	contentType := first(in.Headers, "Content-Type")
	input := domain.FilterInput{Headers: map[string]string{}, Method: in.Method, ContentType: contentType, SourceIP: in.SourceIP}
	for k, v := range in.Headers {
		input.Headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	if mt, _, _ := mime.ParseMediaType(contentType); len(in.Body) > 0 && (mt == "" || strings.Contains(mt, "json")) && anyRules(routes) {
		// (Only filters read the payload: without them it is not decoded.)
		var payload any
		if json.Unmarshal(in.Body, &payload) == nil {
			input.Payload = payload
		}
	}
	now := s.now()
	eventID := kit.NewID()
	receivedUUID := uuid.Must(uuid.NewV7())
	meta := eventstore.Metadata{Actor: "ingest", RequestID: in.RequestID, CorrelationID: eventID}
	var appends []eventstore.StreamAppend
	var newJobs []jobs.NewJob
	var skipped []domain.SkippedRoute
	for _, r := range routes {
		reason := ""
		switch {
		case st.Status != "active":
			reason = "source " + st.Status
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
			DestinationID: r.destID, ReceivedUUID: receivedUUID.String(), AttemptID: attemptID, Trigger: domain.TriggerInitial, Due: now})
		appends = append(appends, eventstore.StreamAppend{
			StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvDeliveryRequested, Metadata: eventstore.Metadata{Actor: "ingest", RequestID: in.RequestID, CorrelationID: eventID, CausationID: receivedUUID.String()},
				Payload: domain.DeliveryRequested{
					DeliveryID: deliveryID, EventID: eventID, ReceivedUUID: receivedUUID.String(),
					ConnectionID: r.connID, ConnectionName: r.connName, DestinationID: r.destID, DestinationName: r.destName,
					RequestURL: r.url, RequestMethod: r.method, AttemptID: attemptID, TriggerType: domain.TriggerInitial, RequestedAt: now,
				}}},
		})
	}
	received := domain.EventReceived{
		EventID: eventID, SourceID: in.SourceID, SourceName: src.Name, SourceSlug: src.Slug, Method: in.Method,
		Headers: in.Headers, Query: in.Query, ContentType: contentType, SourceIP: in.SourceIP,
		BodyB64: base64.StdEncoding.EncodeToString(in.Body), BodySize: len(in.Body), Deliveries: len(appends), ReceivedAt: now,
		VerificationStatus: verification, DedupStatus: "unique", Skipped: skipped,
	}
	eventAppend := func(e domain.EventReceived) eventstore.StreamAppend {
		return eventstore.StreamAppend{StreamType: domain.StreamEvent, StreamID: eventID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{ID: receivedUUID, Type: domain.EvEventReceived, Payload: e, Metadata: meta}}}
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
	if _, err := s.ingest.AppendDedup(ctx, append([]eventstore.StreamAppend{eventAppend(received)}, appends...), newJobs, claim,
		[]eventstore.StreamAppend{eventAppend(dup)}); err != nil {
		return IngestResult{}, fmt.Errorf("ingest: append: %w", err)
	}
	return IngestResult{EventID: eventID, SourceID: in.SourceID}, nil
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

// Redacted is what a credential is stored as.
const Redacted = "[redacted]"

// credentialHeaders are request headers that carry a caller's credentials:
// a session cookie sent along with a top-level navigation to an ingest URL
// would otherwise be readable by the source's owner.
var credentialHeaders = []string{"Cookie", "Authorization", "Proxy-Authorization", "X-API-Key"}

// redactIngestHeaders returns h with credentials replaced by Redacted: the
// credential headers, and the source's signature header when it verifies
// with a secret. The input map is not changed.
func redactIngestHeaders(h map[string][]string, st srcState) map[string][]string {
	names := credentialHeaders
	if st.VerifyEnabled && st.VerifyHeader != "" && st.VerifyType != domain.VerifyStdWebhooks {
		names = append(names[:len(names):len(names)], st.VerifyHeader)
	}
	out := make(map[string][]string, len(h))
	for k, v := range h {
		secret := false
		for _, n := range names {
			if strings.EqualFold(k, n) {
				secret = true
				break
			}
		}
		if secret {
			v = []string{Redacted}
		}
		out[k] = v
	}
	return out
}

// verifySignature checks the webhook's signature over its raw body.
func verifySignature(st srcState, in IngestRequest, now time.Time) error {
	if st.VerifyType == domain.VerifyStdWebhooks {
		return domain.VerifyStandardWebhooks(st.VerifySecret, first(in.Headers, "webhook-id"), first(in.Headers, "webhook-timestamp"),
			first(in.Headers, "webhook-signature"), in.Body, now)
	}
	sig := first(in.Headers, st.VerifyHeader)
	if sig == "" {
		return domain.Errorf(domain.EUnauthorized, "Invalid signature: missing %s header", st.VerifyHeader)
	}
	if !domain.VerifyHMACSignature(st.VerifyType, st.VerifySecret, sig, in.Body) {
		return domain.Errorf(domain.EUnauthorized, "Invalid signature")
	}
	return nil
}

func first(h map[string][]string, key string) string {
	for k, v := range h {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// ---- delivery attempts ----

// Attempt is the seed's delivery_attempt object: exactly its 24 fields.
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
}

const attemptCols = `id, org_id, env_id, event_id, connection_id, destination_id, request_url, request_method, request_headers,
	request_body_size, response_status, response_headers, response_body, duration_ms, status, error, created_at, attempt_number,
	next_retry_at, is_dlq, dlq_at, trigger_type, connection_name, destination_name`

func scanAttempt(row pgx.Row) (Attempt, error) {
	var a Attempt
	var created time.Time
	var next, dlq *time.Time
	err := row.Scan(&a.ID, &a.OrgID, &a.EnvID, &a.EventID, &a.ConnectionID, &a.DestinationID, &a.RequestURL, &a.RequestMethod,
		&a.RequestHeaders, &a.RequestBodySize, &a.ResponseStatus, &a.ResponseHeaders, &a.ResponseBody, &a.DurationMS, &a.Status,
		&a.Error, &created, &a.AttemptNumber, &next, &a.IsDLQ, &dlq, &a.TriggerType, &a.ConnectionName, &a.DestinationName)
	a.CreatedAt = kit.ISOTime(created)
	a.NextRetryAt, a.DLQAt = kit.ISOTimePtr(next), kit.ISOTimePtr(dlq)
	return a, err
}

// AttemptFilter are the list filters of GET /v1/delivery-attempts.
type AttemptFilter struct {
	EventID, ConnectionID, DestinationID, Status string
	IsDLQ                                        *int
	Limit, Offset                                int
}

// ListAttempts lists the tenant's attempts, newest first.
func (s *Service) ListAttempts(ctx context.Context, t domain.Tenant, f AttemptFilter) ([]Attempt, kit.Pagination, error) {
	where := `org_id = $1 AND env_id = $2 AND ($3 = '' OR event_id = $3) AND ($4 = '' OR connection_id = $4)
		AND ($5 = '' OR destination_id = $5) AND ($6 = '' OR status = $6) AND ($7::int IS NULL OR is_dlq = $7)`
	args := []any{t.OrgID, t.EnvID, f.EventID, f.ConnectionID, f.DestinationID, f.Status, f.IsDLQ}
	out, p, err := kit.PageQuery(ctx, s.pool, "delivery_attempts", attemptCols, where, "created_at DESC, id DESC", args, f.Limit, f.Offset, scanAttempt)
	if err != nil {
		return nil, p, fmt.Errorf("list attempts: %w", err)
	}
	return out, p, nil
}

// GetAttempt returns one attempt of the tenant, or ENotFound "Delivery attempt not found".
func (s *Service) GetAttempt(ctx context.Context, t domain.Tenant, id string) (Attempt, error) {
	if !kit.ValidID(id) {
		return Attempt{}, kit.NotFound("Delivery attempt")
	}
	a, err := scanAttempt(s.pool.QueryRow(ctx, `SELECT `+attemptCols+` FROM delivery_attempts WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Attempt{}, kit.NotFound("Delivery attempt")
	}
	if err != nil {
		return Attempt{}, fmt.Errorf("get attempt: %w", err)
	}
	return a, nil
}

func retryFailed(reason string) error {
	return domain.Errorf(domain.EInvalid, "Retry failed: %s", reason)
}

// RetryAttempt retries the delivery an attempt belongs to: RetryRequested at
// the stream's expected version and the job due now, in one transaction. With
// wait it returns the new attempt's outcome (up to the destination timeout),
// else the pending attempt. Refusals are EInvalid "Retry failed: <reason>".
func (s *Service) RetryAttempt(ctx context.Context, t domain.Tenant, attemptID string, wait bool, rid string) (Attempt, error) {
	orig, err := s.GetAttempt(ctx, t, attemptID)
	if err != nil {
		return Attempt{}, err
	}
	var deliveryID string
	if err := s.pool.QueryRow(ctx, `SELECT delivery_id FROM delivery_attempts WHERE id = $1`, orig.ID).Scan(&deliveryID); err != nil {
		return Attempt{}, fmt.Errorf("retry: find delivery: %w", err)
	}
	return s.retryDelivery(ctx, t, deliveryID, orig, wait, rid)
}

// retryDelivery records a manual retry of a delivery (orig is the attempt
// retried) and returns the new attempt, pending or, with wait, its outcome.
func (s *Service) retryDelivery(ctx context.Context, t domain.Tenant, deliveryID string, orig Attempt, wait bool, rid string) (Attempt, error) {
	newAttempt := kit.NewID()
	var err error
	var timeout time.Duration
	for try := 0; ; try++ {
		timeout, err = s.requestRetry(ctx, t, deliveryID, orig, newAttempt, rid)
		if errors.Is(err, eventstore.ErrConcurrency) && try < 3 {
			continue // someone appended first: decide again on the new state
		}
		break
	}
	if errors.Is(err, eventstore.ErrConcurrency) {
		return Attempt{}, retryFailed("the delivery changed concurrently; try again")
	}
	if err != nil {
		return Attempt{}, err
	}
	deadline := s.now().Add(5 * time.Second)
	if wait {
		deadline = deadline.Add(timeout)
	}
	for {
		a, err := s.GetAttempt(ctx, t, newAttempt)
		if err == nil && (!wait || a.Status != domain.AttemptPending) {
			return a, nil
		}
		if err != nil && domain.ErrorCode(err) != domain.ENotFound {
			return Attempt{}, err
		}
		if s.now().After(deadline) {
			if err == nil {
				return a, nil // still pending: the outcome will show in the list
			}
			return Attempt{}, fmt.Errorf("retry: attempt %s not projected in time", newAttempt)
		}
		select {
		case <-ctx.Done():
			return Attempt{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *Service) requestRetry(ctx context.Context, t domain.Tenant, deliveryID string, orig Attempt, newAttempt, rid string) (time.Duration, error) {
	var timeout time.Duration
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var leaseUntil *time.Time
		var state string
		err := tx.QueryRow(ctx, `SELECT state, lease_until FROM delivery_jobs WHERE delivery_id = $1 FOR UPDATE`, deliveryID).Scan(&state, &leaseUntil)
		if errors.Is(err, pgx.ErrNoRows) {
			return retryFailed("the delivery is not scheduled yet")
		}
		if err != nil {
			return fmt.Errorf("lock job: %w", err)
		}
		now := s.now()
		if state == "scheduled" && leaseUntil != nil && leaseUntil.After(now) {
			return retryFailed("an attempt of this delivery is in flight")
		}
		var destStatus, url, method string
		var timeoutMS int
		err = tx.QueryRow(ctx, `SELECT status, url, method, timeout_ms FROM destinations WHERE id = $1`, orig.DestinationID).Scan(&destStatus, &url, &method, &timeoutMS)
		if errors.Is(err, pgx.ErrNoRows) {
			return retryFailed("the destination was deleted")
		}
		if err != nil {
			return fmt.Errorf("load destination: %w", err)
		}
		if destStatus != "active" {
			return retryFailed("the destination is " + destStatus)
		}
		if orig.ConnectionID != "" { // a replay made without a connection has none
			var connEnabled bool
			var connStatus string
			err = tx.QueryRow(ctx, `SELECT enabled, status FROM connections WHERE id = $1`, orig.ConnectionID).Scan(&connEnabled, &connStatus)
			if errors.Is(err, pgx.ErrNoRows) {
				return retryFailed("the connection was deleted")
			}
			if err != nil {
				return fmt.Errorf("load connection: %w", err)
			}
			if !connEnabled || connStatus != "active" {
				return retryFailed("the connection is disabled")
			}
		}
		timeout = time.Duration(timeoutMS) * time.Millisecond
		evs, err := s.store.Load(ctx, tx, deliveryID)
		if err != nil {
			return err
		}
		d := &domain.Delivery{}
		for _, e := range evs {
			if err := d.Apply(e.StreamVersion, e.Type, e.Payload); err != nil {
				return err
			}
		}
		decided, err := d.RequestRetry(orig.ID, newAttempt, url, method, now)
		if err != nil {
			return err
		}
		stored, err := s.store.Append(ctx, tx, eventstore.StreamAppend{
			StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: t.OrgID, EnvID: t.EnvID, Expected: d.Version(),
			Events: toNewEvents(decided, eventstore.Metadata{Actor: t.Actor, RequestID: rid, CorrelationID: orig.EventID, CausationID: orig.ID}),
		})
		if err != nil {
			return err
		}
		for _, e := range stored {
			if err := d.Apply(e.StreamVersion, e.Type, e.Payload); err != nil {
				return err
			}
		}
		if err := jobs.Upsert(ctx, tx, d, t.OrgID, t.EnvID); err != nil {
			return err
		}
		// A manual retry while the destination's circuit is open is its probe.
		return probeByManualRetry(ctx, tx, s.store, t, orig.DestinationID, deliveryID, rid, now)
	})
	return timeout, err
}

func toNewEvents(decided []domain.Decided, md eventstore.Metadata) []eventstore.NewEvent {
	out := make([]eventstore.NewEvent, len(decided))
	for i, d := range decided {
		out[i] = eventstore.NewEvent{Type: d.Type, Payload: d.Payload, Metadata: md}
	}
	return out
}

// ---- events ----

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
	Headers       json.RawMessage `json:"headers"`
	QueryParams   json.RawMessage `json:"query_params"`
	Payload       any             `json:"payload"`
	PayloadInline *string         `json:"payload_inline"`
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
}

// ListEvents lists the tenant's ingested events, newest first.
func (s *Service) ListEvents(ctx context.Context, t domain.Tenant, f EventFilter) ([]EventSummary, kit.Pagination, error) {
	where := `org_id = $1 AND env_id = $2 AND ($3 = '' OR source_id = $3) AND ($4 = '' OR status = $4) AND ($5 = '' OR method = $5)
		AND ($6::timestamptz IS NULL OR received_at > $6) AND ($7::timestamptz IS NULL OR received_at < $7)
		AND ($8 = '' OR dedup_status = $8) AND ($9 = '' OR verification_status = $9)`
	args := []any{t.OrgID, t.EnvID, f.SourceID, f.Status, f.Method, f.After, f.Before, f.DedupStatus, f.VerificationStatus}
	out, p, err := kit.PageQuery(ctx, s.pool, "events_view", eventCols, where, "received_at DESC, id DESC", args, f.Limit, f.Offset,
		func(row pgx.Row) (EventSummary, error) { return scanEventSummary(row) })
	if err != nil {
		return nil, p, fmt.Errorf("list events: %w", err)
	}
	return out, p, nil
}

// GetEvent returns one ingested event with headers, query and payload.
func (s *Service) GetEvent(ctx context.Context, t domain.Tenant, id string) (EventDetail, error) {
	if !kit.ValidID(id) {
		return EventDetail{}, kit.NotFound("Event")
	}
	var d EventDetail
	var body string
	var err error
	d.EventSummary, err = scanEventSummary(s.pool.QueryRow(ctx, `SELECT `+eventCols+`, headers, query_params, body_b64 FROM events_view
		WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID), &d.Headers, &d.QueryParams, &body)
	if errors.Is(err, pgx.ErrNoRows) {
		return EventDetail{}, kit.NotFound("Event")
	}
	if err != nil {
		return EventDetail{}, fmt.Errorf("get event: %w", err)
	}
	raw, _ := base64.StdEncoding.DecodeString(body)
	var parsed any
	if json.Unmarshal(raw, &parsed) == nil {
		d.Payload = parsed
	} else if len(raw) > 0 {
		d.Payload = string(raw)
	}
	str := string(raw)
	d.PayloadInline = &str
	return d, nil
}
