package resources

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	Name                    *string                        `json:"name"`
	Slug                    *string                        `json:"slug"`
	Type                    *string                        `json:"type"`
	URL                     *string                        `json:"url"`
	Method                  *string                        `json:"method"`
	Headers                 *kit.JSONOr[map[string]string] `json:"headers"`
	TimeoutMS               *int                           `json:"timeout_ms"`
	RetryEnabled            *kit.Flag                      `json:"retry_enabled"`
	RetryMaxAttempts        *int                           `json:"retry_max_attempts"`
	RetryBackoffType        *string                        `json:"retry_backoff_type"`
	RetryIntervals          *kit.JSONOr[[]int]             `json:"retry_intervals"`
	Status                  *string                        `json:"status"`
	OrgID                   *string                        `json:"org_id"`
	EnvID                   *string                        `json:"env_id"`
	CircuitBreakerEnabled   *kit.Flag                      `json:"circuit_breaker_enabled"`
	CircuitBreakerThreshold *int                           `json:"circuit_breaker_threshold"`
	CircuitBreakerResetMS   *int                           `json:"circuit_breaker_reset_ms"`
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
func (s *Registry) writeDestination(ctx context.Context, t domain.Tenant, id, evType string, st destState, slug slugMode, rid string) (Destination, error) {
	var out Destination
	err := s.configTx(ctx, func(tx pgx.Tx) error {
		var err error
		if st.Slug, err = claimSlug(ctx, tx, "destinations", "destination", t, id, st.Slug, slug); err != nil {
			return err
		}
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
	slug := slugGiven
	if in.Slug == nil {
		sl := domain.Slugify(*in.Name)
		in.Slug, slug = &sl, slugDerived
	}
	if err := s.applyDestination(&st, in); err != nil {
		return Destination{}, err
	}
	out, err := s.writeDestination(ctx, t, kit.NewID(), domain.EvDestinationCreated, st, slug, rid)
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

// ListDestinations lists a page of the tenant's destinations, newest first.
func (s *Registry) ListDestinations(ctx context.Context, t domain.Tenant, status string, pg Page) ([]Destination, Page, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+destCols+` FROM destinations WHERE org_id = $1 AND env_id = $2 AND ($3 = '' OR status = $3)
		AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $5`, t.OrgID, t.EnvID, status, pg.After, pg.Limit+1)
	out, err := kit.CollectRows(rows, err, func(row pgx.Row) (Destination, error) {
		d, _, err := scanDestination(row)
		return d, err
	})
	if err != nil {
		return nil, pg, fmt.Errorf("list destinations: %w", err)
	}
	return pageOf(out, pg, func(d Destination) string { return d.ID })
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
	slug := slugModeFor(in.Slug, st.Slug)
	if err := s.applyDestination(&st, in); err != nil {
		return Destination{}, err
	}
	out, err := s.writeDestination(ctx, t, id, domain.EvDestinationUpdated, st, slug, rid)
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
