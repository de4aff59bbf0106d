package resources

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
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/handlers/signing"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/secretbox"
)

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
				if e, ok := kit.FieldDecodeError(err, "signing_config"); ok {
					return e
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
func (s *Registry) applyDestination(st *destState, in DestinationInput) error {
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
func (s *Registry) writeDestination(ctx context.Context, t domain.Tenant, id, evType string, st destState, rid string) (Destination, error) {
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
func (s *Registry) CreateDestination(ctx context.Context, t domain.Tenant, in DestinationInput, rid string) (Destination, error) {
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
func (s *Registry) GetDestination(ctx context.Context, t domain.Tenant, id string) (Destination, error) {
	d, _, err := s.getDestination(ctx, t, id)
	return d, err
}

func (s *Registry) getDestination(ctx context.Context, t domain.Tenant, id string) (Destination, destState, error) {
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
func (s *Registry) destinationForUpdate(ctx context.Context, t domain.Tenant, id string) (destState, error) {
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
func (s *Registry) ListDestinations(ctx context.Context, t domain.Tenant, status string) ([]Destination, error) {
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
func (s *Registry) UpdateDestination(ctx context.Context, t domain.Tenant, id string, in DestinationInput, rid string) (Destination, error) {
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
func (s *Registry) DeleteDestination(ctx context.Context, t domain.Tenant, id, rid string) error {
	if _, _, err := s.getDestination(ctx, t, id); err != nil {
		return err
	}
	return s.deleteConfig(ctx, t, domain.StreamDestination, domain.EvDestinationDeleted, "destinations", "destination_id", "Destination", id, rid)
}
