package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/kit"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/handlers/signing"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// configTx runs a configuration write in a transaction, then forgets the
// routes ingest cached (a lookup during the write may have cached the rows
// it replaces).
func (s *Service) configTx(ctx context.Context, fn func(pgx.Tx) error) error {
	defer s.routes.clear()
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// recordConfig appends a configuration event in tx (first write of the tx).
func (s *Service) recordConfig(ctx context.Context, tx pgx.Tx, t domain.Tenant, streamType, id, evType string, payload any, requestID string) error {
	_, err := s.store.Append(ctx, tx, eventstore.StreamAppend{
		StreamType: streamType, StreamID: id, OrgID: t.OrgID, EnvID: t.EnvID, Expected: eventstore.AnyVersion,
		Events: []eventstore.NewEvent{{Type: evType, Payload: payload, Metadata: eventstore.Metadata{Actor: t.Actor, RequestID: requestID, CorrelationID: requestID}}},
	})
	return err
}

// ---- sources ----

// Source is hookstream's source object. The verification secret is never
// returned whole: only its last four characters show.
type Source struct {
	ID                  string  `json:"id"`
	OrgID               string  `json:"org_id"`
	EnvID               string  `json:"env_id"`
	Name                string  `json:"name"`
	Slug                string  `json:"slug"`
	Description         *string `json:"description"`
	Type                string  `json:"type"`
	Status              string  `json:"status"`
	IngestURL           string  `json:"ingest_url"`
	VerificationEnabled int     `json:"verification_enabled"`
	VerificationType    *string `json:"verification_type"`
	VerificationSecret  *string `json:"verification_secret"`
	VerificationHeader  *string `json:"verification_header"`
	DedupEnabled        int     `json:"dedup_enabled"`
	DedupStrategy       *string `json:"dedup_strategy"`
	DedupField          *string `json:"dedup_field"`
	DedupWindowSeconds  int     `json:"dedup_window_seconds"`
	IPAllowlist         string  `json:"ip_allowlist"`
	IPDenylist          string  `json:"ip_denylist"`
	CreatedAt           string  `json:"created_at"`
	UpdatedAt           string  `json:"updated_at"`
}

// SourceInput is the body of POST and PATCH /v1/sources. An empty string
// clears verification_type, dedup_strategy and dedup_field.
type SourceInput struct {
	Name                *string   `json:"name"`
	Slug                *string   `json:"slug"`
	Description         *string   `json:"description"`
	Type                *string   `json:"type"`
	Status              *string   `json:"status"`
	OrgID               *string   `json:"org_id"`
	EnvID               *string   `json:"env_id"`
	VerificationEnabled *bool     `json:"verification_enabled"`
	VerificationType    *string   `json:"verification_type"`
	VerificationSecret  *string   `json:"verification_secret"`
	VerificationHeader  *string   `json:"verification_header"`
	DedupEnabled        *bool     `json:"dedup_enabled"`
	DedupStrategy       *string   `json:"dedup_strategy"`
	DedupField          *string   `json:"dedup_field"`
	DedupWindowSeconds  *int      `json:"dedup_window_seconds"`
	IPAllowlist         *[]string `json:"ip_allowlist"`
	IPDenylist          *[]string `json:"ip_denylist"`
}

// srcState is a source's stored configuration.
type srcState struct {
	Name, Slug, Status                     string
	Description                            *string
	VerifyEnabled                          bool
	VerifyType, VerifySecret, VerifyHeader string
	DedupEnabled                           bool
	DedupStrategy, DedupField              string
	DedupWindow                            int
	Allow, Deny                            []string
	// secretErr is why the stored verification secret could not be read.
	secretErr error
}

const sourceCols = `id, org_id, env_id, name, slug, description, status, created_at, updated_at,
	verification_enabled, coalesce(verification_type, ''), coalesce(verification_secret, ''), coalesce(verification_header, ''),
	dedup_enabled, coalesce(dedup_strategy, ''), coalesce(dedup_field, ''), dedup_window_seconds, ip_allowlist, ip_denylist`

// scanSourceState scans sourceCols (then extra columns, when given).
func (s *Service) scanSourceState(row pgx.Row, extra ...any) (Source, srcState, error) {
	var src Source
	var st srcState
	var created, updated time.Time
	var allow, deny []byte
	if err := row.Scan(append([]any{&src.ID, &src.OrgID, &src.EnvID, &src.Name, &src.Slug, &src.Description, &src.Status, &created, &updated,
		&st.VerifyEnabled, &st.VerifyType, &st.VerifySecret, &st.VerifyHeader, &st.DedupEnabled, &st.DedupStrategy, &st.DedupField,
		&st.DedupWindow, &allow, &deny}, extra...)...); err != nil {
		return src, st, err
	}
	st.Name, st.Slug, st.Status, st.Description = src.Name, src.Slug, src.Status, src.Description
	if err := json.Unmarshal(allow, &st.Allow); err != nil {
		return src, st, fmt.Errorf("source %s ip_allowlist: %w", src.ID, err)
	}
	if err := json.Unmarshal(deny, &st.Deny); err != nil {
		return src, st, fmt.Errorf("source %s ip_denylist: %w", src.ID, err)
	}
	secret, err := secrets.OpenSource(s.p.Secrets, src.ID, st.VerifySecret)
	if err != nil {
		// Shown masked; verification and updates that need it fail closed.
		s.p.Log.Error("source secret unreadable", "source_id", src.ID, "err", err)
		st.secretErr = err
		secret = ""
	}
	st.VerifySecret = secret
	src.Type = "http"
	src.CreatedAt, src.UpdatedAt = kit.ISOTime(created), kit.ISOTime(updated)
	src.IngestURL = strings.TrimRight(s.p.PublicURL, "/") + "/v1/ingest/" + src.ID
	src.VerificationEnabled, src.DedupEnabled, src.DedupWindowSeconds = kit.BoolInt(st.VerifyEnabled), kit.BoolInt(st.DedupEnabled), st.DedupWindow
	src.VerificationType, src.VerificationHeader = kit.NullIfEmpty(st.VerifyType), kit.NullIfEmpty(st.VerifyHeader)
	src.VerificationSecret = secrets.Mask(st.VerifySecret)
	if st.secretErr != nil {
		m := "****"
		src.VerificationSecret = &m
	}
	src.DedupStrategy, src.DedupField = kit.NullIfEmpty(st.DedupStrategy), kit.NullIfEmpty(st.DedupField)
	allowJSON, err := json.Marshal(st.Allow)
	if err != nil {
		return src, st, err
	}
	denyJSON, err := json.Marshal(st.Deny)
	if err != nil {
		return src, st, err
	}
	src.IPAllowlist, src.IPDenylist = string(allowJSON), string(denyJSON)
	return src, st, nil
}

func (s *Service) scanSource(row pgx.Row) (Source, error) {
	src, _, err := s.scanSourceState(row)
	return src, err
}

// apply validates a create or update onto the state.
func (st *srcState) apply(in SourceInput) error {
	if err := domain.ApplyNameSlug(in.Name, in.Slug, &st.Name, &st.Slug); err != nil {
		return err
	}
	if in.Description != nil {
		st.Description = in.Description
	}
	if in.Status != nil {
		if err := domain.CheckStatus(*in.Status); err != nil {
			return err
		}
		st.Status = *in.Status
	}
	if in.VerificationType != nil {
		if *in.VerificationType == "" {
			st.VerifyType, st.VerifyEnabled = "", false
		} else {
			v, ok := domain.NormalizeVerificationType(*in.VerificationType)
			if !ok {
				return kit.Invalidf("'verification_type' must be one of hmac_sha256, hmac_sha1, standard_webhooks")
			}
			st.VerifyType, st.VerifyEnabled = v, true
		}
	}
	if in.VerificationSecret != nil && !secrets.IsMaskOf(*in.VerificationSecret, st.VerifySecret) {
		// (The masked secret the API showed keeps the stored one.)
		if len(*in.VerificationSecret) > 1024 {
			return kit.Invalidf("'verification_secret' is longer than 1024 characters")
		}
		st.VerifySecret, st.secretErr = *in.VerificationSecret, nil
	}
	if in.VerificationHeader != nil {
		if strings.ContainsAny(*in.VerificationHeader, " :\r\n") || len(*in.VerificationHeader) > 200 {
			return kit.Invalidf("'verification_header' is not a header name")
		}
		st.VerifyHeader = *in.VerificationHeader
	}
	if in.VerificationEnabled != nil {
		st.VerifyEnabled = *in.VerificationEnabled
	}
	if st.VerifyEnabled {
		switch {
		case st.VerifyType == "":
			return kit.Invalidf("'verification_type' is required when verification is enabled")
		case st.VerifySecret == "":
			return kit.Invalidf("'verification_secret' is required when verification_type is set")
		case st.VerifyType != domain.VerifyStdWebhooks && st.VerifyHeader == "":
			st.VerifyHeader = "X-Signature"
		}
	}
	if in.DedupStrategy != nil {
		switch *in.DedupStrategy {
		case "":
			st.DedupStrategy, st.DedupEnabled = "", false
		case domain.DedupPayloadHash, domain.DedupHeaderField, domain.DedupBodyField:
			st.DedupStrategy, st.DedupEnabled = *in.DedupStrategy, true
		default:
			return kit.Invalidf("'dedup_strategy' must be one of payload_hash, header_field, body_field")
		}
	}
	if in.DedupField != nil {
		st.DedupField = *in.DedupField
	}
	if in.DedupWindowSeconds != nil {
		if *in.DedupWindowSeconds < 1 || *in.DedupWindowSeconds > 7*86400 {
			return kit.Invalidf("'dedup_window_seconds' must be between 1 and 604800")
		}
		st.DedupWindow = *in.DedupWindowSeconds
	}
	if in.DedupEnabled != nil {
		st.DedupEnabled = *in.DedupEnabled
	}
	if st.DedupEnabled {
		if st.DedupStrategy == "" {
			st.DedupStrategy = domain.DedupPayloadHash
		}
		if st.DedupStrategy != domain.DedupPayloadHash && st.DedupField == "" {
			return kit.Invalidf("'dedup_field' is required for dedup_strategy %s", st.DedupStrategy)
		}
	}
	for _, l := range []struct {
		field string
		in    *[]string
		dst   *[]string
	}{{"ip_allowlist", in.IPAllowlist, &st.Allow}, {"ip_denylist", in.IPDenylist, &st.Deny}} {
		if l.in == nil {
			continue
		}
		if len(*l.in) > 500 {
			return kit.Invalidf("'%s' may hold at most 500 entries", l.field)
		}
		if _, err := domain.ParseIPList(l.field, *l.in); err != nil {
			return err
		}
		*l.dst = append([]string{}, *l.in...)
	}
	return nil
}

// snapshot is the source's configuration as its events record it: the
// secret is represented by a fingerprint, never stored in the log.
func (st srcState) snapshot(id string, kr *secretbox.Keyring) map[string]any {
	return map[string]any{"id": id, "name": st.Name, "slug": st.Slug, "description": st.Description, "status": st.Status,
		"verification_enabled": st.VerifyEnabled, "verification_type": st.VerifyType, "verification_header": st.VerifyHeader,
		"verification_secret_sha256": kr.Fingerprint(st.VerifySecret), "dedup_enabled": st.DedupEnabled,
		"dedup_strategy": st.DedupStrategy, "dedup_field": st.DedupField, "dedup_window_seconds": st.DedupWindow,
		"ip_allowlist": st.Allow, "ip_denylist": st.Deny}
}

func checkTenantFields(t domain.Tenant, org, env *string) error {
	if org != nil && *org != t.OrgID {
		return domain.Errorf(domain.ENotFound, "Environment not found")
	}
	if env != nil && *env != t.EnvID {
		return domain.Errorf(domain.ENotFound, "Environment not found")
	}
	return nil
}

// writeSource records the source's event and writes its row, in one transaction.
func (s *Service) writeSource(ctx context.Context, t domain.Tenant, id, evType string, st srcState, rid string) (Source, error) {
	var out Source
	if st.secretErr != nil {
		return out, fmt.Errorf("source secret: %w", st.secretErr)
	}
	sealed, err := secrets.SealSource(s.p.Secrets, id, st.VerifySecret)
	if err != nil {
		return out, err
	}
	allow, err := json.Marshal(st.Allow)
	if err != nil {
		return out, err
	}
	deny, err := json.Marshal(st.Deny)
	if err != nil {
		return out, err
	}
	err = s.configTx(ctx, func(tx pgx.Tx) error {
		if err := s.recordConfig(ctx, tx, t, domain.StreamSource, id, evType, st.snapshot(id, s.p.Secrets), rid); err != nil {
			return err
		}
		now := s.now()
		var err error
		out, err = s.scanSource(tx.QueryRow(ctx, `INSERT INTO sources (id, org_id, env_id, name, slug, description, status, created_at, updated_at,
				verification_enabled, verification_type, verification_secret, verification_header, dedup_enabled, dedup_strategy, dedup_field,
				dedup_window_seconds, ip_allowlist, ip_denylist)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, NULLIF($10, ''), NULLIF($11, ''), NULLIF($12, ''), $13, NULLIF($14, ''), NULLIF($15, ''), $16, $17, $18)
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, slug = excluded.slug, description = excluded.description,
				status = excluded.status, updated_at = excluded.updated_at, verification_enabled = excluded.verification_enabled,
				verification_type = excluded.verification_type, verification_secret = excluded.verification_secret,
				verification_header = excluded.verification_header, dedup_enabled = excluded.dedup_enabled,
				dedup_strategy = excluded.dedup_strategy, dedup_field = excluded.dedup_field,
				dedup_window_seconds = excluded.dedup_window_seconds, ip_allowlist = excluded.ip_allowlist, ip_denylist = excluded.ip_denylist
			RETURNING `+sourceCols, id, t.OrgID, t.EnvID, st.Name, st.Slug, st.Description, st.Status, now,
			st.VerifyEnabled, st.VerifyType, sealed, st.VerifyHeader, st.DedupEnabled, st.DedupStrategy, st.DedupField,
			st.DedupWindow, allow, deny))
		return err
	})
	return out, err
}

// CreateSource creates a source. EInvalid names the bad field.
func (s *Service) CreateSource(ctx context.Context, t domain.Tenant, in SourceInput, rid string) (Source, error) {
	if err := checkTenantFields(t, in.OrgID, in.EnvID); err != nil {
		return Source{}, err
	}
	if in.Name == nil {
		return Source{}, kit.Invalidf("'name' is required")
	}
	if in.Slug == nil {
		sl := domain.Slugify(*in.Name)
		in.Slug = &sl
	}
	if in.Type != nil && *in.Type != "http" {
		return Source{}, kit.Invalidf("'type' must be http")
	}
	st := srcState{Status: "active", DedupWindow: 300, Allow: []string{}, Deny: []string{}}
	if err := st.apply(in); err != nil {
		return Source{}, err
	}
	out, err := s.writeSource(ctx, t, kit.NewID(), domain.EvSourceCreated, st, rid)
	if err != nil {
		return Source{}, fmt.Errorf("create source: %w", err)
	}
	return out, nil
}

// GetSource returns a source of the tenant, or ENotFound.
func (s *Service) GetSource(ctx context.Context, t domain.Tenant, id string) (Source, error) {
	src, _, err := s.getSource(ctx, t, id)
	return src, err
}

func (s *Service) getSource(ctx context.Context, t domain.Tenant, id string) (Source, srcState, error) {
	if !kit.ValidID(id) {
		return Source{}, srcState{}, kit.NotFound("Source")
	}
	src, st, err := s.scanSourceState(s.pool.QueryRow(ctx, `SELECT `+sourceCols+` FROM sources WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Source{}, st, kit.NotFound("Source")
	}
	if err != nil {
		return Source{}, st, fmt.Errorf("get source: %w", err)
	}
	return src, st, nil
}

// ListSources lists the tenant's sources, newest first.
func (s *Service) ListSources(ctx context.Context, t domain.Tenant, status string) ([]Source, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+sourceCols+` FROM sources WHERE org_id = $1 AND env_id = $2 AND ($3 = '' OR status = $3) ORDER BY created_at DESC, id DESC LIMIT 1000`, t.OrgID, t.EnvID, status)
	out, err := kit.CollectRows(rows, err, s.scanSource)
	if err != nil {
		return nil, fmt.Errorf("list sources: %w", err)
	}
	return out, nil
}

// UpdateSource applies a partial update.
func (s *Service) UpdateSource(ctx context.Context, t domain.Tenant, id string, in SourceInput, rid string) (Source, error) {
	_, st, err := s.getSource(ctx, t, id)
	if err != nil {
		return Source{}, err
	}
	if in.OrgID != nil || in.EnvID != nil || in.Type != nil {
		return Source{}, kit.Invalidf("'org_id', 'env_id' and 'type' cannot be changed")
	}
	if err := st.apply(in); err != nil {
		return Source{}, err
	}
	out, err := s.writeSource(ctx, t, id, domain.EvSourceUpdated, st, rid)
	if err != nil {
		return Source{}, fmt.Errorf("update source: %w", err)
	}
	return out, nil
}

// DeleteSource deletes a source; EConflict while connections use it.
func (s *Service) DeleteSource(ctx context.Context, t domain.Tenant, id, rid string) error {
	if _, err := s.GetSource(ctx, t, id); err != nil {
		return err
	}
	return s.deleteConfig(ctx, t, domain.StreamSource, domain.EvSourceDeleted, "sources", "source_id", "Source", id, rid)
}

func (s *Service) deleteConfig(ctx context.Context, t domain.Tenant, streamType, evType, table, connCol, kind, id, rid string) error {
	err := s.configTx(ctx, func(tx pgx.Tx) error {
		if connCol != "" {
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM connections WHERE `+connCol+` = $1`, id).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return domain.Errorf(domain.EConflict, "%s has %d connection(s); delete them first", kind, n)
			}
		}
		if err := s.recordConfig(ctx, tx, t, streamType, id, evType, map[string]any{"id": id}, rid); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return kit.NotFound(kind)
		}
		return nil
	})
	if err != nil && domain.ErrorCode(err) == domain.EInternal {
		return fmt.Errorf("delete %s: %w", strings.ToLower(kind), err)
	}
	return err
}

// ---- destinations ----

// Destination is hookstream's destination object (HTTP type).
type Destination struct {
	ID                      string         `json:"id"`
	OrgID                   string         `json:"org_id"`
	EnvID                   string         `json:"env_id"`
	Name                    string         `json:"name"`
	Slug                    string         `json:"slug"`
	Type                    string         `json:"type"`
	URL                     string         `json:"url"`
	Method                  string         `json:"method"`
	Headers                 string         `json:"headers"`
	TimeoutMS               int            `json:"timeout_ms"`
	Status                  string         `json:"status"`
	RetryEnabled            int            `json:"retry_enabled"`
	RetryMaxAttempts        int            `json:"retry_max_attempts"`
	RetryBackoffType        string         `json:"retry_backoff_type"`
	RetryIntervals          string         `json:"retry_intervals"`
	CircuitBreakerEnabled   int            `json:"circuit_breaker_enabled"`
	CircuitBreakerThreshold int            `json:"circuit_breaker_threshold"`
	CircuitBreakerResetMS   int            `json:"circuit_breaker_reset_ms"`
	SigningConfig           map[string]any `json:"signing_config"`
	DisabledReason          *string        `json:"disabled_reason"`
	CreatedAt               string         `json:"created_at"`
	UpdatedAt               string         `json:"updated_at"`
}

// DestinationInput is the body of POST and PATCH /v1/destinations.
type DestinationInput struct {
	Name                    *string            `json:"name"`
	Slug                    *string            `json:"slug"`
	Type                    *string            `json:"type"`
	URL                     *string            `json:"url"`
	Method                  *string            `json:"method"`
	Headers                 *map[string]string `json:"headers"`
	TimeoutMS               *int               `json:"timeout_ms"`
	RetryEnabled            *bool              `json:"retry_enabled"`
	RetryMaxAttempts        *int               `json:"retry_max_attempts"`
	RetryBackoffType        *string            `json:"retry_backoff_type"`
	RetryIntervals          *[]int             `json:"retry_intervals"`
	Status                  *string            `json:"status"`
	OrgID                   *string            `json:"org_id"`
	EnvID                   *string            `json:"env_id"`
	CircuitBreakerEnabled   *bool              `json:"circuit_breaker_enabled"`
	CircuitBreakerThreshold *int               `json:"circuit_breaker_threshold"`
	CircuitBreakerResetMS   *int               `json:"circuit_breaker_reset_ms"`
	// SigningConfig: an object sets or changes signing, null removes it.
	SigningConfig json.RawMessage `json:"signing_config"`
}

// destState is a destination's stored configuration.
type destState struct {
	Name, Slug, URL, Method, Status string
	Headers                         map[string]string
	TimeoutMS                       int
	Retry                           domain.RetryPolicy
	Circuit                         domain.CircuitConfig
	Signing                         *signing.Config
	// PrevSecret stays valid until PrevExpires after a rotation.
	PrevSecret     string
	PrevExpires    *time.Time
	DisabledReason string
	now            func() time.Time
	// sealed is the destinations.secrets ciphertext as read; secrets are
	// merged into the fields above only where the plaintext is needed.
	sealed string
}

const destCols = `id, org_id, env_id, name, slug, url, method, headers, timeout_ms, retry_enabled, retry_max_attempts,
	retry_backoff_type, retry_intervals, status, created_at, updated_at, circuit_breaker_enabled, circuit_breaker_threshold,
	circuit_breaker_reset_ms, signing_config, coalesce(signing_previous_secret, ''), signing_previous_expires_at, coalesce(disabled_reason, ''),
	coalesce(secrets, '')`

func scanDestination(row pgx.Row) (Destination, destState, error) {
	var d Destination
	var st destState
	var headers, intervals []byte
	var created, updated time.Time
	var retryEnabled bool
	var signingRaw []byte
	var cbEnabled bool
	err := row.Scan(&d.ID, &d.OrgID, &d.EnvID, &d.Name, &d.Slug, &d.URL, &d.Method, &headers, &d.TimeoutMS, &retryEnabled,
		&d.RetryMaxAttempts, &d.RetryBackoffType, &intervals, &d.Status, &created, &updated, &cbEnabled, &d.CircuitBreakerThreshold,
		&d.CircuitBreakerResetMS, &signingRaw, &st.PrevSecret, &st.PrevExpires, &st.DisabledReason, &st.sealed)
	if err != nil {
		return d, st, err
	}
	d.CircuitBreakerEnabled = kit.BoolInt(cbEnabled)
	st.Circuit = domain.CircuitConfig{Enabled: cbEnabled, Threshold: d.CircuitBreakerThreshold, Reset: time.Duration(d.CircuitBreakerResetMS) * time.Millisecond}
	if len(signingRaw) > 0 && string(signingRaw) != "null" {
		st.Signing = &signing.Config{}
		if err := json.Unmarshal(signingRaw, st.Signing); err != nil {
			return d, st, fmt.Errorf("destination %s signing_config: %w", d.ID, err)
		}
		d.SigningConfig = st.Signing.Masked()
	}
	d.DisabledReason = kit.NullIfEmpty(st.DisabledReason)
	d.Type = "http"
	d.Headers, d.RetryIntervals = string(headers), string(intervals)
	d.RetryEnabled = kit.BoolInt(retryEnabled)
	d.CreatedAt, d.UpdatedAt = kit.ISOTime(created), kit.ISOTime(updated)
	st.Name, st.Slug, st.URL, st.Method, st.Status, st.TimeoutMS = d.Name, d.Slug, d.URL, d.Method, d.Status, d.TimeoutMS
	st.Retry = domain.RetryPolicy{Enabled: retryEnabled, MaxRetries: d.RetryMaxAttempts, Backoff: d.RetryBackoffType}
	if err := json.Unmarshal(headers, &st.Headers); err != nil {
		return d, st, fmt.Errorf("destination %s headers: %w", d.ID, err)
	}
	if err := json.Unmarshal(intervals, &st.Retry.Intervals); err != nil {
		return d, st, fmt.Errorf("destination %s retry_intervals: %w", d.ID, err)
	}
	return d, st, nil
}

func (st *destState) apply(in DestinationInput) error {
	if err := domain.ApplyNameSlug(in.Name, in.Slug, &st.Name, &st.Slug); err != nil {
		return err
	}
	oldOrigin := secrets.Origin(st.URL)
	if in.URL != nil && !(st.URL != "" && *in.URL == secrets.MaskedURL(st.URL)) {
		// (The URL as the API shows it, userinfo masked, keeps the stored one.)
		u, err := url.Parse(*in.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(*in.URL) > 2048 {
			return kit.Invalidf("'url' must be an absolute http(s) URL")
		}
		if u.User != nil && u.User.String() == "****" {
			return kit.Invalidf("'url' has masked credentials (****@); send the URL with its real userinfo, or the unchanged URL")
		}
		st.URL = *in.URL
	}
	if in.Method != nil {
		m := strings.ToUpper(*in.Method)
		if m != "POST" && m != "PUT" && m != "PATCH" {
			return kit.Invalidf("'method' must be one of POST, PUT, PATCH")
		}
		st.Method = m
	}
	given := map[string]bool{} // credential headers this request sets anew
	if in.Headers != nil {
		if len(*in.Headers) > 50 {
			return kit.Invalidf("'headers' may hold at most 50 headers")
		}
		next := make(map[string]string, len(*in.Headers))
		for k, v := range *in.Headers {
			if k == "" || len(k) > 200 || len(v) > 8192 || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(v, "\r\n") {
				return kit.Invalidf("'headers' has an invalid header %q", k)
			}
			if cur, ok := st.Headers[k]; ok && secrets.CredentialHeader(k) && secrets.IsMaskOf(v, cur) {
				v = cur // the masked value the API showed: unchanged
			} else if secrets.CredentialHeader(k) {
				given[k] = true
			}
			next[k] = v
		}
		st.Headers = next
	}
	if oldOrigin != "" && secrets.Origin(st.URL) != oldOrigin {
		// Stored credentials were given for the old host: a URL moved to
		// another one keeps only those this request sets again, so nobody who
		// can edit a destination can send its hidden credentials elsewhere.
		for k := range st.Headers {
			if secrets.CredentialHeader(k) && !given[k] {
				delete(st.Headers, k)
			}
		}
	}
	if in.TimeoutMS != nil {
		if *in.TimeoutMS < 100 || *in.TimeoutMS > 120000 {
			return kit.Invalidf("'timeout_ms' must be between 100 and 120000")
		}
		st.TimeoutMS = *in.TimeoutMS
	}
	if in.RetryEnabled != nil {
		st.Retry.Enabled = *in.RetryEnabled
	}
	if in.RetryMaxAttempts != nil {
		st.Retry.MaxRetries = *in.RetryMaxAttempts
	}
	if in.RetryBackoffType != nil {
		st.Retry.Backoff = *in.RetryBackoffType
	}
	if in.RetryIntervals != nil {
		st.Retry.Intervals = *in.RetryIntervals
	}
	if in.Status != nil {
		if err := domain.CheckStatus(*in.Status); err != nil {
			return err
		}
		if *in.Status != "disabled" {
			st.DisabledReason = ""
		}
		st.Status = *in.Status
	}
	if in.CircuitBreakerEnabled != nil {
		st.Circuit.Enabled = *in.CircuitBreakerEnabled
	}
	if in.CircuitBreakerThreshold != nil {
		if *in.CircuitBreakerThreshold < 1 || *in.CircuitBreakerThreshold > 1000 {
			return kit.Invalidf("'circuit_breaker_threshold' must be between 1 and 1000")
		}
		st.Circuit.Threshold = *in.CircuitBreakerThreshold
	}
	if in.CircuitBreakerResetMS != nil {
		if *in.CircuitBreakerResetMS < 100 || *in.CircuitBreakerResetMS > 86400000 {
			return kit.Invalidf("'circuit_breaker_reset_ms' must be between 100 and 86400000")
		}
		st.Circuit.Reset = time.Duration(*in.CircuitBreakerResetMS) * time.Millisecond
	}
	if len(in.SigningConfig) > 0 {
		if string(in.SigningConfig) == "null" {
			st.Signing, st.PrevSecret, st.PrevExpires = nil, "", nil
		} else {
			var si signing.Input
			dec := json.NewDecoder(strings.NewReader(string(in.SigningConfig)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&si); err != nil {
				if e := jsonError(err); strings.Contains(e.Error(), "'") {
					return domain.Errorf(domain.EInvalid, "%s", strings.Replace(e.Error(), "Invalid body: '", "Invalid body: 'signing_config.", 1))
				}
				return kit.Invalidf("'signing_config' must be an object: %v", err)
			}
			old := st.Signing
			next, err := signing.Apply(old, si)
			if err != nil {
				return err
			}
			if old != nil && old.Mode == "standard_webhooks" && old.Secret != next.Secret && next.Mode == "standard_webhooks" && next.RotationGraceSeconds > 0 {
				// Rotation: the old secret keeps signing alongside the new one for the grace period.
				until := st.now().Add(time.Duration(next.RotationGraceSeconds) * time.Second)
				st.PrevSecret, st.PrevExpires = old.Secret, &until
			}
			st.Signing = next
		}
	}
	return st.Retry.Validate()
}

// applyDestination validates a create or update onto st, including the
// outbound policy's verdict on a URL whose host is an address literal.
func (s *Service) applyDestination(st *destState, in DestinationInput) error {
	if err := st.apply(in); err != nil {
		return err
	}
	if in.URL != nil {
		if err := s.p.Outbound.CheckURL(st.URL); err != nil {
			return kit.Invalidf("'url' points to an address that is not allowed (loopback, private, link-local or reserved)")
		}
	}
	return nil
}

// snapshot is the destination as its events record it: credentials (signing
// secrets, credential headers, URL userinfo) appear as keyed fingerprints
// only, never in plaintext or ciphertext.
func (st destState) snapshot(id string, kr *secretbox.Keyring) map[string]any {
	shownURL, shownHeaders, sec := splitSecrets(st)
	snap := map[string]any{"id": id, "name": st.Name, "slug": st.Slug, "url": shownURL, "method": st.Method, "headers": shownHeaders,
		"timeout_ms": st.TimeoutMS, "retry_enabled": st.Retry.Enabled, "retry_max_attempts": st.Retry.MaxRetries,
		"retry_backoff_type": st.Retry.Backoff, "retry_intervals": st.Retry.Intervals, "status": st.Status,
		"circuit_breaker_enabled": st.Circuit.Enabled, "circuit_breaker_threshold": st.Circuit.Threshold,
		"circuit_breaker_reset_ms": st.Circuit.Reset.Milliseconds()}
	if len(sec.Headers) > 0 || sec.URL != "" {
		fps := map[string]string{}
		for k, v := range sec.Headers {
			fps["header:"+k] = kr.Fingerprint(v)
		}
		if sec.URL != "" {
			fps["url"] = kr.Fingerprint(sec.URL)
		}
		snap["secret_fingerprints"] = fps
	}
	if st.Signing != nil {
		sc := st.Signing.Masked()
		sc["secret_sha256"] = kr.Fingerprint(st.Signing.Secret)
		delete(sc, "secret")
		if st.PrevSecret != "" {
			sc["previous_secret_sha256"], sc["previous_secret_expires_at"] = kr.Fingerprint(st.PrevSecret), st.PrevExpires
		}
		snap["signing_config"] = sc
	}
	return snap
}

// writeDestination records the destination's event and writes its row, in one transaction.
func (s *Service) writeDestination(ctx context.Context, t domain.Tenant, id, evType string, st destState, rid string) (Destination, error) {
	var out Destination
	err := s.configTx(ctx, func(tx pgx.Tx) error {
		shownURL, shownHeaders, sec := splitSecrets(st)
		sealed, err := secrets.SealDest(s.p.Secrets, id, sec)
		if err != nil {
			return err
		}
		if err := s.recordConfig(ctx, tx, t, domain.StreamDestination, id, evType, st.snapshot(id, s.p.Secrets), rid); err != nil {
			return err
		}
		headers, err := json.Marshal(shownHeaders)
		if err != nil {
			return err
		}
		intervals, err := json.Marshal(st.Retry.Intervals)
		if err != nil {
			return err
		}
		signingJSON, err := st.Signing.Stored()
		if err != nil {
			return err
		}
		out, _, err = scanDestination(tx.QueryRow(ctx, `INSERT INTO destinations (id, org_id, env_id, name, slug, url, method, headers, timeout_ms,
				retry_enabled, retry_max_attempts, retry_backoff_type, retry_intervals, status, created_at, updated_at,
				circuit_breaker_enabled, circuit_breaker_threshold, circuit_breaker_reset_ms, signing_config, signing_previous_secret,
				signing_previous_expires_at, disabled_reason, secrets)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16, $17, $18, $19, NULL, $20, NULLIF($21, ''), NULLIF($22, ''))
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, slug = excluded.slug, url = excluded.url, method = excluded.method,
				headers = excluded.headers, timeout_ms = excluded.timeout_ms, retry_enabled = excluded.retry_enabled,
				retry_max_attempts = excluded.retry_max_attempts, retry_backoff_type = excluded.retry_backoff_type,
				retry_intervals = excluded.retry_intervals, status = excluded.status, updated_at = excluded.updated_at,
				circuit_breaker_enabled = excluded.circuit_breaker_enabled, circuit_breaker_threshold = excluded.circuit_breaker_threshold,
				circuit_breaker_reset_ms = excluded.circuit_breaker_reset_ms, signing_config = excluded.signing_config,
				signing_previous_secret = excluded.signing_previous_secret, signing_previous_expires_at = excluded.signing_previous_expires_at,
				disabled_reason = excluded.disabled_reason, secrets = excluded.secrets
			RETURNING `+destCols,
			id, t.OrgID, t.EnvID, st.Name, st.Slug, shownURL, st.Method, headers, st.TimeoutMS, st.Retry.Enabled, st.Retry.MaxRetries,
			st.Retry.Backoff, intervals, st.Status, s.now(), st.Circuit.Enabled, st.Circuit.Threshold, st.Circuit.Reset.Milliseconds(),
			signingJSON, st.PrevExpires, st.DisabledReason, sealed))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO destination_circuits (destination_id, org_id, env_id) VALUES ($1, $2, $3)
			ON CONFLICT (destination_id) DO NOTHING`, id, t.OrgID, t.EnvID); err != nil {
			return err
		}
		if !st.Circuit.Enabled {
			// A breaker switched off lets its queue go.
			if _, err := tx.Exec(ctx, `UPDATE destination_circuits SET state = 'closed', failure_count = 0, opened_at = NULL, probe_delivery_id = NULL
				WHERE destination_id = $1 AND state <> 'closed'`, id); err != nil {
				return err
			}
		}
		err = jobs.Notify(ctx, tx)
		return err
	})
	return out, err
}

// CreateDestination creates an HTTP destination with hookstream's defaults.
func (s *Service) CreateDestination(ctx context.Context, t domain.Tenant, in DestinationInput, rid string) (Destination, error) {
	if err := checkTenantFields(t, in.OrgID, in.EnvID); err != nil {
		return Destination{}, err
	}
	if in.Type != nil && *in.Type != "http" {
		return Destination{}, kit.Invalidf("'type' must be http")
	}
	if in.Name == nil {
		return Destination{}, kit.Invalidf("'name' is required")
	}
	if in.URL == nil {
		return Destination{}, kit.Invalidf("'url' is required for HTTP destinations")
	}
	st := destState{Method: "POST", Status: "active", Headers: map[string]string{}, TimeoutMS: 30000, Retry: domain.DefaultRetryPolicy(),
		Circuit: domain.CircuitConfig{Enabled: true, Threshold: 5, Reset: time.Minute}, now: s.now}
	if in.Slug == nil {
		sl := domain.Slugify(*in.Name)
		in.Slug = &sl
	}
	if err := s.applyDestination(&st, in); err != nil {
		return Destination{}, err
	}
	out, err := s.writeDestination(ctx, t, kit.NewID(), domain.EvDestinationCreated, st, rid)
	if err != nil {
		return Destination{}, fmt.Errorf("create destination: %w", err)
	}
	return out, nil
}

// GetDestination returns a destination of the tenant, or ENotFound.
func (s *Service) GetDestination(ctx context.Context, t domain.Tenant, id string) (Destination, error) {
	d, _, err := s.getDestination(ctx, t, id)
	return d, err
}

func (s *Service) getDestination(ctx context.Context, t domain.Tenant, id string) (Destination, destState, error) {
	if !kit.ValidID(id) {
		return Destination{}, destState{}, kit.NotFound("Destination")
	}
	d, st, err := scanDestination(s.pool.QueryRow(ctx, `SELECT `+destCols+` FROM destinations WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return d, st, kit.NotFound("Destination")
	}
	if err != nil {
		return d, st, fmt.Errorf("get destination: %w", err)
	}
	return d, st, nil
}

// destinationForUpdate is getDestination with the secrets decrypted into
// the state, for an update that must carry them over.
func (s *Service) destinationForUpdate(ctx context.Context, t domain.Tenant, id string) (destState, error) {
	_, st, err := s.getDestination(ctx, t, id)
	if err != nil {
		return st, err
	}
	sec, err := secrets.OpenDest(s.p.Secrets, id, st.sealed)
	if err != nil {
		return st, fmt.Errorf("update destination: %w", err)
	}
	mergeSecrets(&st, sec)
	return st, nil
}

// ListDestinations lists the tenant's destinations, newest first.
func (s *Service) ListDestinations(ctx context.Context, t domain.Tenant, status string) ([]Destination, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+destCols+` FROM destinations WHERE org_id = $1 AND env_id = $2 AND ($3 = '' OR status = $3) ORDER BY created_at DESC, id DESC LIMIT 1000`, t.OrgID, t.EnvID, status)
	out, err := kit.CollectRows(rows, err, func(row pgx.Row) (Destination, error) {
		d, _, err := scanDestination(row)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list destinations: %w", err)
	}
	return out, nil
}

// UpdateDestination applies a partial update; a rename is recorded and
// followed by the delivery attempts read model.
func (s *Service) UpdateDestination(ctx context.Context, t domain.Tenant, id string, in DestinationInput, rid string) (Destination, error) {
	if in.OrgID != nil || in.EnvID != nil || in.Type != nil {
		return Destination{}, kit.Invalidf("'org_id', 'env_id' and 'type' cannot be changed")
	}
	st, err := s.destinationForUpdate(ctx, t, id)
	if err != nil {
		return Destination{}, err
	}
	st.now = s.now
	if err := s.applyDestination(&st, in); err != nil {
		return Destination{}, err
	}
	out, err := s.writeDestination(ctx, t, id, domain.EvDestinationUpdated, st, rid)
	if err != nil {
		return Destination{}, fmt.Errorf("update destination: %w", err)
	}
	return out, nil
}

// DeleteDestination deletes a destination; EConflict while connections use it.
func (s *Service) DeleteDestination(ctx context.Context, t domain.Tenant, id, rid string) error {
	if _, _, err := s.getDestination(ctx, t, id); err != nil {
		return err
	}
	return s.deleteConfig(ctx, t, domain.StreamDestination, domain.EvDestinationDeleted, "destinations", "destination_id", "Destination", id, rid)
}

// ---- connections ----

// Connection is hookstream's connection object.
type Connection struct {
	ID              string  `json:"id"`
	OrgID           string  `json:"org_id"`
	EnvID           string  `json:"env_id"`
	SourceID        string  `json:"source_id"`
	DestinationID   string  `json:"destination_id"`
	Name            string  `json:"name"`
	Description     *string `json:"description"`
	Enabled         int     `json:"enabled"`
	Status          string  `json:"status"`
	FilterRules     string  `json:"filter_rules"`
	SourceName      *string `json:"source_name"`
	DestinationName *string `json:"destination_name"`
	CreatedAt       string  `json:"created_at"`
	UpdatedAt       string  `json:"updated_at"`
}

// ConnectionInput is the body of POST and PATCH /v1/connections.
type ConnectionInput struct {
	SourceID      *string              `json:"source_id"`
	DestinationID *string              `json:"destination_id"`
	Name          *string              `json:"name"`
	Description   *string              `json:"description"`
	Enabled       *bool                `json:"enabled"`
	Status        *string              `json:"status"`
	FilterRules   *[]domain.FilterRule `json:"filter_rules"`
	OrgID         *string              `json:"org_id"`
	EnvID         *string              `json:"env_id"`
}

const connSelect = `SELECT c.id, c.org_id, c.env_id, c.source_id, c.destination_id, c.name, c.description, c.enabled, c.status,
	c.filter_rules, s.name, d.name, c.created_at, c.updated_at
	FROM connections c LEFT JOIN sources s ON s.id = c.source_id LEFT JOIN destinations d ON d.id = c.destination_id`

func scanConnection(row pgx.Row) (Connection, error) {
	var c Connection
	var enabled bool
	var rules []byte
	var created, updated time.Time
	err := row.Scan(&c.ID, &c.OrgID, &c.EnvID, &c.SourceID, &c.DestinationID, &c.Name, &c.Description, &enabled, &c.Status,
		&rules, &c.SourceName, &c.DestinationName, &created, &updated)
	c.Enabled = kit.BoolInt(enabled)
	c.FilterRules = string(rules)
	c.CreatedAt, c.UpdatedAt = kit.ISOTime(created), kit.ISOTime(updated)
	return c, err
}

// CreateConnection routes a source to a destination, both of the tenant.
func (s *Service) CreateConnection(ctx context.Context, t domain.Tenant, in ConnectionInput, rid string) (Connection, error) {
	if err := checkTenantFields(t, in.OrgID, in.EnvID); err != nil {
		return Connection{}, err
	}
	switch {
	case in.SourceID == nil:
		return Connection{}, kit.Invalidf("'source_id' is required")
	case in.DestinationID == nil:
		return Connection{}, kit.Invalidf("'destination_id' is required")
	case in.Name == nil:
		return Connection{}, kit.Invalidf("'name' is required")
	}
	if err := domain.CheckName("name", *in.Name); err != nil {
		return Connection{}, err
	}
	if _, err := s.GetSource(ctx, t, *in.SourceID); err != nil {
		return Connection{}, kit.RemapNotFound(err, "Source or destination not found")
	}
	if _, _, err := s.getDestination(ctx, t, *in.DestinationID); err != nil {
		return Connection{}, kit.RemapNotFound(err, "Source or destination not found")
	}
	rules := []domain.FilterRule{}
	if in.FilterRules != nil {
		rules = *in.FilterRules
	}
	if err := domain.ValidateFilterRules(rules); err != nil {
		return Connection{}, err
	}
	enabled, status := true, "active"
	if in.Enabled != nil {
		enabled = *in.Enabled
	}
	if in.Status != nil {
		if err := domain.CheckStatus(*in.Status); err != nil {
			return Connection{}, err
		}
		status = *in.Status
	}
	id, now := kit.NewID(), s.now()
	rulesJSON, _ := json.Marshal(rules)
	err := s.configTx(ctx, func(tx pgx.Tx) error {
		snap := map[string]any{"id": id, "source_id": *in.SourceID, "destination_id": *in.DestinationID, "name": *in.Name,
			"description": in.Description, "enabled": enabled, "status": status, "filter_rules": rules}
		if err := s.recordConfig(ctx, tx, t, domain.StreamConnection, id, domain.EvConnectionCreated, snap, rid); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO connections (id, org_id, env_id, source_id, destination_id, name, description, enabled, status, filter_rules, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)`, id, t.OrgID, t.EnvID, *in.SourceID, *in.DestinationID, *in.Name, in.Description, enabled, status, rulesJSON, now)
		return err
	})
	if err != nil {
		return Connection{}, fmt.Errorf("create connection: %w", err)
	}
	return s.GetConnection(ctx, t, id)
}

// GetConnection returns a connection of the tenant, or ENotFound.
func (s *Service) GetConnection(ctx context.Context, t domain.Tenant, id string) (Connection, error) {
	if !kit.ValidID(id) {
		return Connection{}, kit.NotFound("Connection")
	}
	c, err := scanConnection(s.pool.QueryRow(ctx, connSelect+` WHERE c.id = $1 AND c.org_id = $2 AND c.env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return c, kit.NotFound("Connection")
	}
	if err != nil {
		return c, fmt.Errorf("get connection: %w", err)
	}
	return c, nil
}

// ListConnections lists the tenant's connections, optionally by source, destination or status.
func (s *Service) ListConnections(ctx context.Context, t domain.Tenant, sourceID, destinationID, status string) ([]Connection, error) {
	rows, err := s.pool.Query(ctx, connSelect+` WHERE c.org_id = $1 AND c.env_id = $2 AND ($3 = '' OR c.source_id = $3)
		AND ($4 = '' OR c.destination_id = $4) AND ($5 = '' OR c.status = $5) ORDER BY c.created_at DESC, c.id DESC LIMIT 1000`,
		t.OrgID, t.EnvID, sourceID, destinationID, status)
	out, err := kit.CollectRows(rows, err, scanConnection)
	if err != nil {
		return nil, fmt.Errorf("list connections: %w", err)
	}
	return out, nil
}

// UpdateConnection applies a partial update (source and destination are fixed).
func (s *Service) UpdateConnection(ctx context.Context, t domain.Tenant, id string, in ConnectionInput, rid string) (Connection, error) {
	cur, err := s.GetConnection(ctx, t, id)
	if err != nil {
		return Connection{}, err
	}
	if in.OrgID != nil || in.EnvID != nil || in.SourceID != nil || in.DestinationID != nil {
		return Connection{}, kit.Invalidf("'source_id', 'destination_id', 'org_id' and 'env_id' cannot be changed")
	}
	name, desc, enabled, status := cur.Name, cur.Description, cur.Enabled == 1, cur.Status
	var rules []domain.FilterRule
	_ = json.Unmarshal([]byte(cur.FilterRules), &rules)
	if in.Name != nil {
		if err := domain.CheckName("name", *in.Name); err != nil {
			return Connection{}, err
		}
		name = *in.Name
	}
	if in.Description != nil {
		desc = in.Description
	}
	if in.Enabled != nil {
		enabled = *in.Enabled
	}
	if in.Status != nil {
		if err := domain.CheckStatus(*in.Status); err != nil {
			return Connection{}, err
		}
		status = *in.Status
	}
	if in.FilterRules != nil {
		if err := domain.ValidateFilterRules(*in.FilterRules); err != nil {
			return Connection{}, err
		}
		rules = *in.FilterRules
	}
	if rules == nil {
		rules = []domain.FilterRule{}
	}
	rulesJSON, _ := json.Marshal(rules)
	err = s.configTx(ctx, func(tx pgx.Tx) error {
		snap := map[string]any{"id": id, "source_id": cur.SourceID, "destination_id": cur.DestinationID, "name": name,
			"description": desc, "enabled": enabled, "status": status, "filter_rules": rules}
		if err := s.recordConfig(ctx, tx, t, domain.StreamConnection, id, domain.EvConnectionUpdated, snap, rid); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE connections SET name = $2, description = $3, enabled = $4, status = $5, filter_rules = $6, updated_at = $7 WHERE id = $1`,
			id, name, desc, enabled, status, rulesJSON, s.now())
		return err
	})
	if err != nil {
		return Connection{}, fmt.Errorf("update connection: %w", err)
	}
	return s.GetConnection(ctx, t, id)
}

// DeleteConnection deletes a connection; deliveries already made stay.
func (s *Service) DeleteConnection(ctx context.Context, t domain.Tenant, id, rid string) error {
	if _, err := s.GetConnection(ctx, t, id); err != nil {
		return err
	}
	return s.deleteConfig(ctx, t, domain.StreamConnection, domain.EvConnectionDeleted, "connections", "", "Connection", id, rid)
}
