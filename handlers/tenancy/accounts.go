package tenancy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/kit"
)

// Accounts manages organizations, environments, API keys and sessions: the
// tenancy the rest of the API is scoped by.
type Accounts struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
}

// NewAccounts returns the account manager over pool (store nil: a default store).
func NewAccounts(pool *pgxpool.Pool, store *eventstore.Store) *Accounts {
	if store == nil {
		store = eventstore.New(nil)
	}
	return &Accounts{pool: pool, store: store}
}

// record appends one tenancy event in tx (its first write).
func (a *Accounts) record(ctx context.Context, tx pgx.Tx, streamType, id, org, env, evType string, payload any, actor string) error {
	_, err := a.store.Append(ctx, tx, eventstore.StreamAppend{
		StreamType: streamType, StreamID: id, OrgID: org, EnvID: env, Expected: eventstore.AnyVersion,
		Events: []eventstore.NewEvent{{Type: evType, Payload: payload, Metadata: eventstore.Metadata{Actor: actor}}},
	})
	return err
}

// ---- organizations and environments ----

// Environment is hookstream's environment (project) object.
type Environment struct {
	ID        string `json:"id"`
	OrgID     string `json:"org_id"`
	Name      string `json:"name"`
	Slug      string `json:"slug"`
	CreatedAt string `json:"created_at"`
	// PayloadRetentionDays is how long webhook bodies and headers are kept
	// (default 30; fractions allowed, at least 60 s).
	PayloadRetentionDays float64 `json:"payload_retention_days"`
	// ArchivePayloads: 1 when payloads are archived (NDJSON under serve's
	// --archive-dir) before they expire.
	ArchivePayloads int `json:"archive_payloads"`
	// IngestRateLimit is the environment's ingest limit in webhooks per
	// second across its sources (null: none).
	IngestRateLimit *int `json:"ingest_rate_limit"`
	// HistoryRetentionDays is how long a finished webhook's whole history
	// (its event, deliveries and attempts, in the log and the lists) is
	// kept (null, the default: forever).
	HistoryRetentionDays *float64 `json:"history_retention_days"`
}

// EnvironmentInput is the body of POST and PATCH /v1/environments.
type EnvironmentInput struct {
	Name                 *string   `json:"name"`
	Slug                 *string   `json:"slug"`
	PayloadRetentionDays *float64  `json:"payload_retention_days"`
	ArchivePayloads      *kit.Flag `json:"archive_payloads"`
	// IngestRateLimit 0 removes the limit.
	IngestRateLimit *int `json:"ingest_rate_limit"`
	// HistoryRetentionDays 0 keeps the history forever.
	HistoryRetentionDays *float64 `json:"history_retention_days"`
}

// applySettings validates the retention and rate-limit settings of in onto e.
func (e *Environment) applySettings(in EnvironmentInput) error {
	if v := in.PayloadRetentionDays; v != nil {
		if *v*86400 < 60 || *v > 3650 || *v != *v {
			return kit.Invalidf("'payload_retention_days' must be from 60 s (0.0007) to 3650 days")
		}
		e.PayloadRetentionDays = *v
	}
	if in.ArchivePayloads != nil {
		e.ArchivePayloads = 0
		if *in.ArchivePayloads {
			e.ArchivePayloads = 1
		}
	}
	if v := in.HistoryRetentionDays; v != nil {
		switch {
		case *v == 0:
			e.HistoryRetentionDays = nil
		case *v*86400 < 60 || *v > 3650 || *v != *v:
			return kit.Invalidf("'history_retention_days' must be from 60 s (0.0007) to 3650 days, or 0 to keep the history forever")
		default:
			e.HistoryRetentionDays = v
		}
	}
	if v := in.IngestRateLimit; v != nil {
		switch {
		case *v == 0:
			e.IngestRateLimit = nil
		case *v < 0 || *v > 100000:
			return kit.Invalidf("'ingest_rate_limit' must be from 1 to 100000 webhooks per second, or 0 for none")
		default:
			e.IngestRateLimit = v
		}
	}
	return nil
}

// retentionSeconds is the stored form of PayloadRetentionDays.
func (e Environment) retentionSeconds() int64 {
	return max(60, int64(math.Round(e.PayloadRetentionDays*86400)))
}

// historySeconds is the stored form of HistoryRetentionDays (nil: forever).
func (e Environment) historySeconds() *int64 {
	if e.HistoryRetentionDays == nil {
		return nil
	}
	s := max(60, int64(math.Round(*e.HistoryRetentionDays*86400)))
	return &s
}

// settingsRecord is what an EnvironmentUpdated event records.
func (e Environment) settingsRecord() map[string]any {
	return map[string]any{"id": e.ID, "name": e.Name, "slug": e.Slug, "payload_retention_seconds": e.retentionSeconds(),
		"archive_payloads": e.ArchivePayloads == 1, "ingest_rate_limit": e.IngestRateLimit, "history_retention_seconds": e.historySeconds()}
}

// Organization is a tenant with its first environment.
type Organization struct {
	ID          string      `json:"id"`
	Name        string      `json:"name"`
	CreatedAt   string      `json:"created_at"`
	Environment Environment `json:"environment"`
}

// CreateOrganization creates an organization with a "Production" environment.
func (a *Accounts) CreateOrganization(ctx context.Context, name, actor string, now time.Time) (Organization, error) {
	if err := domain.CheckName("name", name); err != nil {
		return Organization{}, err
	}
	org := Organization{ID: kit.NewID(), Name: name, CreatedAt: kit.ISOTime(now)}
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		if err := a.record(ctx, tx, domain.StreamOrg, org.ID, org.ID, "", domain.EvOrgCreated, map[string]any{"id": org.ID, "name": name}, actor); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)`, org.ID, name, now); err != nil {
			return err
		}
		var err error
		org.Environment, err = a.insertEnvironment(ctx, tx, org.ID, "Production", "production", actor, now)
		return err
	})
	if err != nil {
		return Organization{}, fmt.Errorf("create organization: %w", err)
	}
	return org, nil
}

func (a *Accounts) insertEnvironment(ctx context.Context, tx pgx.Tx, org, name, slug, actor string, now time.Time) (Environment, error) {
	env := Environment{ID: kit.NewID(), OrgID: org, Name: name, Slug: slug, CreatedAt: kit.ISOTime(now), PayloadRetentionDays: 30}
	if err := a.record(ctx, tx, domain.StreamEnvironment, env.ID, org, env.ID, domain.EvEnvironmentCreated,
		map[string]any{"id": env.ID, "name": name, "slug": slug}, actor); err != nil {
		return env, err
	}
	_, err := tx.Exec(ctx, `INSERT INTO environments (id, org_id, name, slug, created_at) VALUES ($1, $2, $3, $4, $5)`, env.ID, org, name, slug, now)
	return env, uniqueSlug(err)
}

// uniqueSlug turns a slug's unique violation into a 409.
func uniqueSlug(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "23505" {
		return domain.Errorf(domain.EConflict, "Slug already exists")
	}
	return err
}

// CreateEnvironment adds an environment to the tenant's organization.
func (a *Accounts) CreateEnvironment(ctx context.Context, t domain.Tenant, in EnvironmentInput, now time.Time) (Environment, error) {
	if in.Name == nil {
		return Environment{}, kit.Invalidf("'name' is required")
	}
	if in.Slug == nil {
		sl := domain.Slugify(*in.Name)
		in.Slug = &sl
	}
	var name, slug string
	if err := domain.ApplyNameSlug(in.Name, in.Slug, &name, &slug); err != nil {
		return Environment{}, err
	}
	settings := Environment{PayloadRetentionDays: 30}
	if err := settings.applySettings(in); err != nil {
		return Environment{}, err
	}
	var env Environment
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var err error
		if env, err = a.insertEnvironment(ctx, tx, t.OrgID, name, slug, t.Actor, now); err != nil {
			return err
		}
		env.PayloadRetentionDays, env.ArchivePayloads, env.IngestRateLimit = settings.PayloadRetentionDays, settings.ArchivePayloads, settings.IngestRateLimit
		env.HistoryRetentionDays = settings.HistoryRetentionDays
		if in.PayloadRetentionDays == nil && in.ArchivePayloads == nil && in.IngestRateLimit == nil && in.HistoryRetentionDays == nil {
			return nil // the defaults the row already has
		}
		if err := a.record(ctx, tx, domain.StreamEnvironment, env.ID, t.OrgID, env.ID, domain.EvEnvironmentUpdated,
			env.settingsRecord(), t.Actor); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE environments SET payload_retention_seconds = $2, archive_payloads = $3, ingest_rate_limit = $4,
			history_retention_seconds = $5 WHERE id = $1`,
			env.ID, env.retentionSeconds(), env.ArchivePayloads == 1, env.IngestRateLimit, env.historySeconds())
		return err
	})
	if err != nil {
		return Environment{}, kit.WrapInternal("create environment", err)
	}
	return env, nil
}

const envCols = `id, org_id, name, slug, created_at, payload_retention_seconds, archive_payloads, ingest_rate_limit, history_retention_seconds`

func scanEnvironment(row pgx.Row) (Environment, error) {
	var e Environment
	var created time.Time
	var retention int64
	var archive bool
	var history *int64
	err := row.Scan(&e.ID, &e.OrgID, &e.Name, &e.Slug, &created, &retention, &archive, &e.IngestRateLimit, &history)
	e.CreatedAt = kit.ISOTime(created)
	e.PayloadRetentionDays = float64(retention) / 86400
	if history != nil {
		days := float64(*history) / 86400
		e.HistoryRetentionDays = &days
	}
	if archive {
		e.ArchivePayloads = 1
	}
	return e, err
}

// ListEnvironments lists the tenant organization's environments, oldest first.
func (a *Accounts) ListEnvironments(ctx context.Context, t domain.Tenant) ([]Environment, error) {
	rows, err := a.pool.Query(ctx, `SELECT `+envCols+` FROM environments WHERE org_id = $1 ORDER BY created_at, id LIMIT 1000`, t.OrgID)
	out, err := kit.CollectRows(rows, err, scanEnvironment)
	if err != nil {
		return nil, fmt.Errorf("list environments: %w", err)
	}
	return out, nil
}

// GetEnvironment returns one of the organization's environments, or ENotFound.
func (a *Accounts) GetEnvironment(ctx context.Context, t domain.Tenant, id string) (Environment, error) {
	if !kit.ValidID(id) {
		return Environment{}, kit.NotFound("Environment")
	}
	e, err := scanEnvironment(a.pool.QueryRow(ctx, `SELECT `+envCols+` FROM environments WHERE id = $1 AND org_id = $2`, id, t.OrgID))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, kit.NotFound("Environment")
	}
	if err != nil {
		return e, fmt.Errorf("get environment: %w", err)
	}
	return e, nil
}

// UpdateEnvironment renames an environment or changes its slug.
func (a *Accounts) UpdateEnvironment(ctx context.Context, t domain.Tenant, id string, in EnvironmentInput, now time.Time) (Environment, error) {
	if _, err := a.GetEnvironment(ctx, t, id); err != nil {
		return Environment{}, err
	}
	var cur Environment
	// Read and write under the row's lock: two concurrent updates of
	// different fields both land (a lost archive_payloads would let payloads
	// expire unarchived).
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var err error
		if cur, err = scanEnvironment(tx.QueryRow(ctx, `SELECT `+envCols+` FROM environments WHERE id = $1 AND org_id = $2 FOR UPDATE`, id, t.OrgID)); err != nil {
			return err
		}
		if err := domain.ApplyNameSlug(in.Name, in.Slug, &cur.Name, &cur.Slug); err != nil {
			return err
		}
		if err := cur.applySettings(in); err != nil {
			return err
		}
		if err := a.record(ctx, tx, domain.StreamEnvironment, id, t.OrgID, id, domain.EvEnvironmentUpdated,
			cur.settingsRecord(), t.Actor); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE environments SET name = $2, slug = $3, payload_retention_seconds = $4, archive_payloads = $5,
			ingest_rate_limit = $6, history_retention_seconds = $7 WHERE id = $1`, id, cur.Name, cur.Slug, cur.retentionSeconds(),
			cur.ArchivePayloads == 1, cur.IngestRateLimit, cur.historySeconds())
		return uniqueSlug(err)
	})
	if domain.ErrorCode(err) != domain.EInternal {
		return Environment{}, err
	}
	if err != nil {
		return Environment{}, kit.WrapInternal("update environment", err)
	}
	return cur, nil
}

// ---- API keys ----

// APIKey is a key as GET /v1/auth/api-keys lists it: never the key itself.
type APIKey struct {
	ID           string  `json:"id"`
	Name         string  `json:"name"`
	KeyPrefix    string  `json:"key_prefix"`
	Scopes       *string `json:"scopes"`
	EnvID        string  `json:"env_id"`
	RequestCount int64   `json:"request_count"`
	Revoked      int     `json:"revoked"`
	CreatedAt    string  `json:"created_at"`
	LastUsedAt   *string `json:"last_used_at"`
	RevokedAt    *string `json:"revoked_at"`
}

// APIKeyInput is the body of POST /v1/auth/api-keys.
type APIKeyInput struct {
	Name   *string `json:"name"`
	OrgID  *string `json:"org_id"`
	EnvID  *string `json:"env_id"`
	Scopes *string `json:"scopes"`
}

// ListAPIKeys lists an environment's keys, newest first (revoked ones too).
func (a *Accounts) ListAPIKeys(ctx context.Context, org, env string) ([]APIKey, error) {
	rows, err := a.pool.Query(ctx, `SELECT id, name, key_prefix, scopes, env_id, request_count, revoked_at IS NOT NULL, created_at, last_used_at, revoked_at
		FROM api_keys WHERE org_id = $1 AND ($2 = '' OR env_id = $2) ORDER BY created_at DESC, id DESC LIMIT 1000`, org, env)
	out, err := kit.CollectRows(rows, err, func(row pgx.Row) (APIKey, error) {
		var k APIKey
		var revoked bool
		var created time.Time
		var used, revokedAt *time.Time
		err := row.Scan(&k.ID, &k.Name, &k.KeyPrefix, &k.Scopes, &k.EnvID, &k.RequestCount, &revoked, &created, &used, &revokedAt)
		k.Revoked, k.CreatedAt, k.LastUsedAt, k.RevokedAt = kit.BoolInt(revoked), kit.ISOTime(created), kit.ISOTimePtr(used), kit.ISOTimePtr(revokedAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return out, nil
}

// RevokeAPIKey revokes one of the organization's keys at once, and ends the
// sessions made from it. ENotFound for an unknown or foreign key; revoking
// a revoked key changes nothing.
func (a *Accounts) RevokeAPIKey(ctx context.Context, org, id, actor string, now time.Time) error {
	if !kit.ValidID(id) {
		return kit.NotFound("API key")
	}
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var env string
		var revoked bool
		err := tx.QueryRow(ctx, `SELECT env_id, revoked_at IS NOT NULL FROM api_keys WHERE id = $1 AND org_id = $2 FOR UPDATE`, id, org).Scan(&env, &revoked)
		if errors.Is(err, pgx.ErrNoRows) {
			return kit.NotFound("API key")
		}
		if err != nil || revoked {
			return err
		}
		if err := a.record(ctx, tx, domain.StreamAPIKey, id, org, env, domain.EvAPIKeyRevoked, map[string]any{"id": id}, actor); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE api_keys SET revoked_at = $2 WHERE id = $1`, id, now); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM sessions WHERE api_key_id = $1`, id)
		return err
	})
	return kit.WrapInternal("revoke api key", err)
}

// ---- sessions ----

// DefaultSessionTTL is how long a session lasts (Better Auth's default).
const DefaultSessionTTL = 7 * 24 * time.Hour

// Session is a browser session (better-auth.session_token); the token is
// returned once, at creation, and stored only as its SHA-256.
type Session struct {
	ID        string `json:"id"`
	OrgID     string `json:"org_id"`
	EnvID     string `json:"env_id"`
	ExpiresAt string `json:"expires_at"`
	CreatedAt string `json:"created_at"`
	// CSRFToken is what the session's writes send in X-CSRF-Token.
	CSRFToken string `json:"csrf_token"`
	Token     string `json:"-"`
}

// CreateSession starts a session for a tenant (from an API key when keyID
// is set: revoking the key ends it) lasting ttl.
func (a *Accounts) CreateSession(ctx context.Context, org, env, keyID, createdBy string, ttl time.Duration, now time.Time) (Session, error) {
	var s Session
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var err error
		s, err = a.createSession(ctx, tx, org, env, keyID, createdBy, ttl, now)
		return err
	})
	if err != nil {
		return Session{}, fmt.Errorf("create session: %w", err)
	}
	return s, nil
}

// newToken is a secret for a session or a login link: 192 random bits, URL-safe.
func newToken() (string, error) {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(raw), nil
}

// createSession records and stores a new session in tx.
func (a *Accounts) createSession(ctx context.Context, tx pgx.Tx, org, env, keyID, createdBy string, ttl time.Duration, now time.Time) (Session, error) {
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	token, err := newToken()
	if err != nil {
		return Session{}, err
	}
	s := Session{ID: kit.NewID(), OrgID: org, EnvID: env, ExpiresAt: kit.ISOTime(now.Add(ttl)), CreatedAt: kit.ISOTime(now), Token: token}
	s.CSRFToken = CSRFToken(s.Token)
	var key *string
	if keyID != "" {
		key = &keyID
	}
	if err := a.record(ctx, tx, domain.StreamSession, s.ID, org, env, domain.EvSessionCreated,
		map[string]any{"id": s.ID, "api_key_id": keyID, "created_by": createdBy, "expires_at": s.ExpiresAt}, createdBy); err != nil {
		return Session{}, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO sessions (token_hash, id, org_id, env_id, expires_at, created_at, api_key_id, created_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, secrets.Hash(s.Token), s.ID, org, env, now.Add(ttl), now, key, createdBy)
	return s, err
}

// LoginLink is a one-time dashboard login link; Token is shown once.
type LoginLink struct {
	ID        string `json:"id"`
	OrgID     string `json:"org_id"`
	EnvID     string `json:"env_id"`
	ExpiresAt string `json:"expires_at"`
	Token     string `json:"token"`
}

// DefaultLoginLinkTTL is how long a login link can be redeemed.
const DefaultLoginLinkTTL = 15 * time.Minute

// CreateLoginLink makes a one-time link that logs a browser into env with a
// session as `sessions create` makes (not tied to an API key).
func (a *Accounts) CreateLoginLink(ctx context.Context, org, env, createdBy string, ttl time.Duration, now time.Time) (LoginLink, error) {
	if ttl <= 0 {
		ttl = DefaultLoginLinkTTL
	}
	token, err := newToken()
	if err != nil {
		return LoginLink{}, err
	}
	l := LoginLink{ID: kit.NewID(), OrgID: org, EnvID: env, ExpiresAt: kit.ISOTime(now.Add(ttl)), Token: token}
	err = pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		if err := a.record(ctx, tx, domain.StreamSession, l.ID, org, env, domain.EvLoginLinkCreated,
			map[string]any{"id": l.ID, "created_by": createdBy, "expires_at": l.ExpiresAt}, createdBy); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO login_links (token_hash, id, org_id, env_id, expires_at, created_at, created_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, secrets.Hash(l.Token), l.ID, org, env, now.Add(ttl), now, createdBy)
		return err
	})
	if err != nil {
		return LoginLink{}, fmt.Errorf("create login link: %w", err)
	}
	return l, nil
}

// RedeemLoginLink spends a login link (once, before it expires) for a new
// session; an unknown, used or expired link is a 401.
func (a *Accounts) RedeemLoginLink(ctx context.Context, token string, now time.Time) (Session, error) {
	if _, err := a.pool.Exec(ctx, `DELETE FROM login_links WHERE expires_at <= $1`, now); err != nil {
		return Session{}, fmt.Errorf("expire login links: %w", err)
	}
	// Spent and turned into a session in one transaction: a failure keeps the link.
	var s Session
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var id, org, env string
		if err := tx.QueryRow(ctx, `DELETE FROM login_links WHERE token_hash = $1 AND expires_at > $2 RETURNING id, org_id, env_id`,
			secrets.Hash(token), now).Scan(&id, &org, &env); err != nil {
			return err
		}
		var err error
		s, err = a.createSession(ctx, tx, org, env, "", "login_link:"+id, DefaultSessionTTL, now)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Session{}, domain.Errorf(domain.EUnauthorized, "This login link is unknown, used or expired: ask for a new one (hookstream login-link)")
	}
	if err != nil {
		return Session{}, fmt.Errorf("redeem login link: %w", err)
	}
	return s, nil
}

// EndSession deletes a session (logout); expired sessions are removed with it.
func (a *Accounts) EndSession(ctx context.Context, t domain.Tenant, now time.Time) error {
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		if err := a.record(ctx, tx, domain.StreamSession, t.SessionID, t.OrgID, t.EnvID, domain.EvSessionEnded, map[string]any{"id": t.SessionID}, t.Actor); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM sessions WHERE id = $1 OR expires_at < $2`, t.SessionID, now)
		return err
	})
	return kit.WrapInternal("end session", err)
}

// testEnvironment returns the organization's "test" environment for hs_test_
// keys, creating it when missing.
func testEnvironment(ctx context.Context, tx pgx.Tx, org string, now time.Time) (string, error) {
	var env string
	err := tx.QueryRow(ctx, `SELECT id FROM environments WHERE org_id = $1 AND slug = 'test'`, org).Scan(&env)
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return env, err
	}
	env = kit.NewID()
	_, err = tx.Exec(ctx, `INSERT INTO environments (id, org_id, name, slug, created_at) VALUES ($1, $2, 'Test', 'test', $3)`, env, org, now)
	return env, err
}
