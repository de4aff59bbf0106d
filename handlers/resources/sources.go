package resources

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/secretbox"
)

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
	// RateLimit is the source's ingest limit in webhooks per second (429
	// with Retry-After above it); null: none.
	RateLimit *int   `json:"rate_limit"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
}

// SourceInput is the body of POST and PATCH /v1/sources. An empty string
// clears verification_type, dedup_strategy and dedup_field.
type SourceInput struct {
	Name                *string               `json:"name"`
	Slug                *string               `json:"slug"`
	Description         *string               `json:"description"`
	Type                *string               `json:"type"`
	Status              *string               `json:"status"`
	OrgID               *string               `json:"org_id"`
	EnvID               *string               `json:"env_id"`
	VerificationEnabled *kit.Flag             `json:"verification_enabled"`
	VerificationType    *string               `json:"verification_type"`
	VerificationSecret  *string               `json:"verification_secret"`
	VerificationHeader  *string               `json:"verification_header"`
	DedupEnabled        *kit.Flag             `json:"dedup_enabled"`
	DedupStrategy       *string               `json:"dedup_strategy"`
	DedupField          *string               `json:"dedup_field"`
	DedupWindowSeconds  *int                  `json:"dedup_window_seconds"`
	IPAllowlist         *kit.JSONOr[[]string] `json:"ip_allowlist"`
	IPDenylist          *kit.JSONOr[[]string] `json:"ip_denylist"`
	// RateLimit 0 removes the limit.
	RateLimit *int `json:"rate_limit"`
}

// SourceState is a source's stored configuration.
type SourceState struct {
	Name, Slug, Status                     string
	Description                            *string
	VerifyEnabled                          bool
	VerifyType, VerifySecret, VerifyHeader string
	DedupEnabled                           bool
	DedupStrategy, DedupField              string
	DedupWindow                            int
	Allow, Deny                            []string
	RateLimit                              int // webhooks/s; 0: none
	// SecretErr is why the stored verification secret could not be read.
	SecretErr error
}

const SourceCols = `id, org_id, env_id, name, slug, description, status, created_at, updated_at,
	verification_enabled, coalesce(verification_type, ''), coalesce(verification_secret, ''), coalesce(verification_header, ''),
	dedup_enabled, coalesce(dedup_strategy, ''), coalesce(dedup_field, ''), dedup_window_seconds, ip_allowlist, ip_denylist, coalesce(rate_limit, 0)`

// ScanSourceState scans SourceCols (then extra columns, when given).
func (s *Registry) ScanSourceState(row pgx.Row, extra ...any) (Source, SourceState, error) {
	var src Source
	var st SourceState
	var created, updated time.Time
	var allow, deny []byte
	if err := row.Scan(append([]any{&src.ID, &src.OrgID, &src.EnvID, &src.Name, &src.Slug, &src.Description, &src.Status, &created, &updated,
		&st.VerifyEnabled, &st.VerifyType, &st.VerifySecret, &st.VerifyHeader, &st.DedupEnabled, &st.DedupStrategy, &st.DedupField,
		&st.DedupWindow, &allow, &deny, &st.RateLimit}, extra...)...); err != nil {
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
		st.SecretErr = err
		secret = ""
	}
	st.VerifySecret = secret
	src.Type = "http"
	src.CreatedAt, src.UpdatedAt = kit.ISOTime(created), kit.ISOTime(updated)
	src.IngestURL = strings.TrimRight(s.p.PublicURL, "/") + "/v1/ingest/" + src.ID
	src.VerificationEnabled, src.DedupEnabled, src.DedupWindowSeconds = kit.BoolInt(st.VerifyEnabled), kit.BoolInt(st.DedupEnabled), st.DedupWindow
	src.VerificationType, src.VerificationHeader = kit.NullIfEmpty(st.VerifyType), kit.NullIfEmpty(st.VerifyHeader)
	src.VerificationSecret = secrets.Mask(st.VerifySecret)
	if st.SecretErr != nil {
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
	if st.RateLimit > 0 {
		limit := st.RateLimit
		src.RateLimit = &limit
	}
	return src, st, nil
}

func (s *Registry) scanSource(row pgx.Row) (Source, error) {
	src, _, err := s.ScanSourceState(row)
	return src, err
}

// apply validates a create or update onto the state.
func (st *SourceState) apply(in SourceInput) error {
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
	if err := st.applyVerification(in); err != nil {
		return err
	}
	if err := st.applyDedup(in); err != nil {
		return err
	}
	if in.RateLimit != nil {
		if *in.RateLimit < 0 || *in.RateLimit > 100000 {
			return kit.Invalidf("'rate_limit' must be from 1 to 100000 webhooks per second, or 0 for none")
		}
		st.RateLimit = *in.RateLimit
	}
	return st.applyIPLists(in)
}

// applyVerification validates signature verification: type, secret, header.
func (st *SourceState) applyVerification(in SourceInput) error {
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
		st.VerifySecret, st.SecretErr = *in.VerificationSecret, nil
	}
	if in.VerificationHeader != nil {
		if strings.ContainsAny(*in.VerificationHeader, " :\r\n") || len(*in.VerificationHeader) > 200 {
			return kit.Invalidf("'verification_header' is not a header name")
		}
		st.VerifyHeader = *in.VerificationHeader
	}
	if in.VerificationEnabled != nil {
		st.VerifyEnabled = bool(*in.VerificationEnabled)
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
	return nil
}

// applyDedup validates deduplication: strategy, field, window.
func (st *SourceState) applyDedup(in SourceInput) error {
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
		st.DedupEnabled = bool(*in.DedupEnabled)
	}
	if st.DedupEnabled {
		if st.DedupStrategy == "" {
			st.DedupStrategy = domain.DedupPayloadHash
		}
		if st.DedupStrategy != domain.DedupPayloadHash && st.DedupField == "" {
			return kit.Invalidf("'dedup_field' is required for dedup_strategy %s", st.DedupStrategy)
		}
	}
	return nil
}

// applyIPLists validates the allow and deny lists.
func (st *SourceState) applyIPLists(in SourceInput) error {
	for _, l := range []struct {
		field string
		in    *kit.JSONOr[[]string]
		dst   *[]string
	}{{"ip_allowlist", in.IPAllowlist, &st.Allow}, {"ip_denylist", in.IPDenylist, &st.Deny}} {
		if l.in == nil {
			continue
		}
		if len(l.in.V) > 500 {
			return kit.Invalidf("'%s' may hold at most 500 entries", l.field)
		}
		if _, err := domain.ParseIPList(l.field, l.in.V); err != nil {
			return err
		}
		*l.dst = append([]string{}, l.in.V...)
	}
	return nil
}

// snapshot is the source's configuration as its events record it: the
// secret is represented by a fingerprint, never stored in the log.
func (st SourceState) snapshot(id string, kr *secretbox.Keyring) map[string]any {
	return map[string]any{"id": id, "name": st.Name, "slug": st.Slug, "description": st.Description, "status": st.Status,
		"verification_enabled": st.VerifyEnabled, "verification_type": st.VerifyType, "verification_header": st.VerifyHeader,
		"verification_secret_sha256": kr.Fingerprint(st.VerifySecret), "dedup_enabled": st.DedupEnabled,
		"dedup_strategy": st.DedupStrategy, "dedup_field": st.DedupField, "dedup_window_seconds": st.DedupWindow,
		"ip_allowlist": st.Allow, "ip_denylist": st.Deny, "rate_limit": st.RateLimit}
}

// writeSource records the source's event and writes its row, in one transaction.
func (s *Registry) writeSource(ctx context.Context, t domain.Tenant, id, evType string, st SourceState, slug slugMode, rid string) (Source, error) {
	var out Source
	if st.SecretErr != nil {
		return out, fmt.Errorf("source secret: %w", st.SecretErr)
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
		var err error
		if st.Slug, err = claimSlug(ctx, tx, "sources", "source", t, id, st.Slug, slug); err != nil {
			return err
		}
		if err := s.recordConfig(ctx, tx, t, domain.StreamSource, id, evType, st.snapshot(id, s.p.Secrets), rid); err != nil {
			return err
		}
		now := s.now()
		out, err = s.scanSource(tx.QueryRow(ctx, `INSERT INTO sources (id, org_id, env_id, name, slug, description, status, created_at, updated_at,
				verification_enabled, verification_type, verification_secret, verification_header, dedup_enabled, dedup_strategy, dedup_field,
				dedup_window_seconds, ip_allowlist, ip_denylist, rate_limit)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, NULLIF($10, ''), NULLIF($11, ''), NULLIF($12, ''), $13, NULLIF($14, ''), NULLIF($15, ''), $16, $17, $18,
				NULLIF($19, 0))
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, slug = excluded.slug, description = excluded.description,
				status = excluded.status, updated_at = excluded.updated_at, verification_enabled = excluded.verification_enabled,
				verification_type = excluded.verification_type, verification_secret = excluded.verification_secret,
				verification_header = excluded.verification_header, dedup_enabled = excluded.dedup_enabled,
				dedup_strategy = excluded.dedup_strategy, dedup_field = excluded.dedup_field,
				dedup_window_seconds = excluded.dedup_window_seconds, ip_allowlist = excluded.ip_allowlist, ip_denylist = excluded.ip_denylist,
				rate_limit = excluded.rate_limit
			RETURNING `+SourceCols, id, t.OrgID, t.EnvID, st.Name, st.Slug, st.Description, st.Status, now,
			st.VerifyEnabled, st.VerifyType, sealed, st.VerifyHeader, st.DedupEnabled, st.DedupStrategy, st.DedupField,
			st.DedupWindow, allow, deny, st.RateLimit))
		return err
	})
	return out, err
}

// CreateSource creates a source. EInvalid names the bad field.
func (s *Registry) CreateSource(ctx context.Context, t domain.Tenant, in SourceInput, rid string) (Source, error) {
	if err := checkTenantFields(t, in.OrgID, in.EnvID); err != nil {
		return Source{}, err
	}
	if in.Name == nil {
		return Source{}, kit.Invalidf("'name' is required")
	}
	slug := slugGiven
	if in.Slug == nil {
		sl := domain.Slugify(*in.Name)
		in.Slug, slug = &sl, slugDerived
	}
	if in.Type != nil && *in.Type != "http" {
		return Source{}, kit.Invalidf("'type' must be http")
	}
	st := SourceState{Status: "active", DedupWindow: 300, Allow: []string{}, Deny: []string{}}
	if err := st.apply(in); err != nil {
		return Source{}, err
	}
	out, err := s.writeSource(ctx, t, kit.NewID(), domain.EvSourceCreated, st, slug, rid)
	if err != nil {
		return Source{}, fmt.Errorf("create source: %w", err)
	}
	return out, nil
}

// GetSource returns a source of the tenant, or ENotFound.
func (s *Registry) GetSource(ctx context.Context, t domain.Tenant, id string) (Source, error) {
	src, _, err := s.getSource(ctx, t, id)
	return src, err
}

func (s *Registry) getSource(ctx context.Context, t domain.Tenant, id string) (Source, SourceState, error) {
	if !kit.ValidID(id) {
		return Source{}, SourceState{}, kit.NotFound("Source")
	}
	src, st, err := s.ScanSourceState(s.pool.QueryRow(ctx, `SELECT `+SourceCols+` FROM sources WHERE id = $1 AND org_id = $2 AND env_id = $3`, id, t.OrgID, t.EnvID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Source{}, st, kit.NotFound("Source")
	}
	if err != nil {
		return Source{}, st, fmt.Errorf("get source: %w", err)
	}
	return src, st, nil
}

// ListSources lists a page of the tenant's sources, newest first.
func (s *Registry) ListSources(ctx context.Context, t domain.Tenant, status string, pg Page) ([]Source, Page, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+SourceCols+` FROM sources WHERE org_id = $1 AND env_id = $2 AND ($3 = '' OR status = $3)
		AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $5`, t.OrgID, t.EnvID, status, pg.After, pg.Limit+1)
	out, err := kit.CollectRows(rows, err, s.scanSource)
	if err != nil {
		return nil, pg, fmt.Errorf("list sources: %w", err)
	}
	return pageOf(out, pg, func(s Source) string { return s.ID })
}

// UpdateSource applies a partial update.
func (s *Registry) UpdateSource(ctx context.Context, t domain.Tenant, id string, in SourceInput, rid string) (Source, error) {
	_, st, err := s.getSource(ctx, t, id)
	if err != nil {
		return Source{}, err
	}
	if in.OrgID != nil || in.EnvID != nil || in.Type != nil {
		return Source{}, kit.Invalidf("'org_id', 'env_id' and 'type' cannot be changed")
	}
	slug := slugModeFor(in.Slug, st.Slug)
	if err := st.apply(in); err != nil {
		return Source{}, err
	}
	out, err := s.writeSource(ctx, t, id, domain.EvSourceUpdated, st, slug, rid)
	if err != nil {
		return Source{}, fmt.Errorf("update source: %w", err)
	}
	return out, nil
}

// DeleteSource deletes a source; EConflict while connections use it.
func (s *Registry) DeleteSource(ctx context.Context, t domain.Tenant, id, rid string) error {
	if _, err := s.GetSource(ctx, t, id); err != nil {
		return err
	}
	return s.deleteConfig(ctx, t, domain.StreamSource, domain.EvSourceDeleted, "sources", "source_id", "Source", id, rid)
}
