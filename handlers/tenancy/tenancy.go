// Package tenancy is who a request acts for: API keys and Better Auth
// session cookies, organizations, environments and sessions.
package tenancy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/kit"
)

// CookieName is Better Auth's session cookie name; securePrefix is the
// prefix Better Auth puts on it when served over HTTPS.
const (
	CookieName   = "better-auth.session_token"
	securePrefix = "__Secure-"
)

// SignCookie is a session token as Better Auth writes its cookie:
// "<token>.<base64 HMAC-SHA256(secret, token)>", URL-encoded. Without a
// secret the token stands alone.
func SignCookie(secret []byte, token string) string {
	if len(secret) == 0 {
		return token
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(token))
	return url.QueryEscape(token + "." + base64.StdEncoding.EncodeToString(m.Sum(nil)))
}

// SessionCookie is the Cookie header pair a client sends for a session:
// "better-auth.session_token=<value>".
func SessionCookie(secret []byte, token string) string {
	return CookieName + "=" + SignCookie(secret, token)
}

// cookieToken returns the session token of a cookie value, checking its
// signature when a secret is configured ("" when it does not verify).
func cookieToken(secret []byte, value string) string {
	if v, err := url.QueryUnescape(value); err == nil {
		value = v
	}
	if len(secret) == 0 {
		return value
	}
	i := strings.LastIndexByte(value, '.')
	if i <= 0 {
		return ""
	}
	token, sig := value[:i], value[i+1:]
	got, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return ""
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(token))
	if !hmac.Equal(got, m.Sum(nil)) {
		return ""
	}
	return token
}

// CSRFToken is the anti-CSRF token of a session: HMAC-SHA256 keyed by the
// session token, so only a page that was given it (GET /v1/auth/session,
// which another origin cannot read) can send it, and the server needs no
// state to check it. Cookie-authenticated writes carry it in X-CSRF-Token.
func CSRFToken(sessionToken string) string {
	m := hmac.New(sha256.New, []byte(sessionToken))
	m.Write([]byte("hookstream-csrf-v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CSRFHeader is the request header a cookie-authenticated write carries its
// CSRF token in.
const CSRFHeader = "X-CSRF-Token"

// sessionCookieValue is the request's session cookie (plain or __Secure-).
func sessionCookieValue(r *http.Request) string {
	for _, name := range []string{CookieName, securePrefix + CookieName} {
		if c, err := r.Cookie(name); err == nil && c.Value != "" {
			return c.Value
		}
	}
	return ""
}

// Authenticate resolves the request's credentials: X-API-Key, the same key as
// a Bearer token, then the session cookie (also when a key was given but is
// invalid, as hookstream's combinedAuth does). Revoked keys and expired
// sessions are refused at once: nothing is cached.
func Authenticate(ctx context.Context, pool *pgxpool.Pool, r *http.Request, now time.Time, cookieSecret []byte) (domain.Tenant, error) {
	key := r.Header.Get("X-API-Key")
	if key == "" {
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			key = strings.TrimSpace(h[7:])
		}
	}
	if key != "" {
		var t domain.Tenant
		err := pool.QueryRow(ctx, `SELECT id, org_id, env_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL`, secrets.Hash(key)).Scan(&t.KeyID, &t.OrgID, &t.EnvID)
		if err == nil {
			t.Actor = "api_key:" + t.KeyID
			return t, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return domain.Tenant{}, fmt.Errorf("look up api key: %w", err)
		}
	}
	if v := sessionCookieValue(r); v != "" {
		if token := cookieToken(cookieSecret, v); token != "" {
			var t domain.Tenant
			var id *string
			err := pool.QueryRow(ctx, `SELECT id, org_id, env_id, api_key_id IS NOT NULL FROM sessions WHERE token_hash = $1 AND expires_at > $2`,
				secrets.Hash(token), now).Scan(&id, &t.OrgID, &t.EnvID, &t.SessionFromKey)
			if err == nil {
				if id != nil {
					t.SessionID = *id
				}
				t.Actor = "session:" + t.SessionID
				t.CSRF = CSRFToken(token)
				return t, nil
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return domain.Tenant{}, fmt.Errorf("look up session: %w", err)
			}
		}
	}
	return domain.Tenant{}, domain.Errorf(domain.EUnauthorized, "Unauthorized")
}

// CreatedKey is a new API key; Key is shown once and never stored.
type CreatedKey struct {
	ID        string  `json:"id"`
	Name      string  `json:"name"`
	Key       string  `json:"key"`
	KeyPrefix string  `json:"key_prefix"`
	Scopes    *string `json:"scopes"`
	OrgID     string  `json:"org_id"`
	EnvID     string  `json:"env_id"`
	CreatedAt string  `json:"created_at"`
}

// KeyParams describe a key to create. Empty OrgID/EnvID pick the first
// organization and its first environment, creating defaults when none exist.
type KeyParams struct {
	Name  string
	OrgID string
	EnvID string
	Test  bool // hs_test_ instead of hs_live_; without EnvID, the organization's "test" environment
	// Scopes is stored and listed as given (hookstream's default "*").
	Scopes *string
	// Actor records who created the key (default "cli").
	Actor string
}

// CreateAPIKey creates an API key (and records APIKeyCreated, without the secret).
// It returns ENotFound when the organization or environment does not exist.
func CreateAPIKey(ctx context.Context, pool *pgxpool.Pool, store *eventstore.Store, p KeyParams, now time.Time) (CreatedKey, error) {
	if store == nil {
		store = eventstore.New(nil)
	}
	if strings.TrimSpace(p.Name) == "" {
		return CreatedKey{}, domain.Errorf(domain.EInvalid, "Invalid body: 'name' is required")
	}
	if len(p.Name) > 200 {
		return CreatedKey{}, domain.Errorf(domain.EInvalid, "Invalid body: 'name' must be at most 200 characters")
	}
	var out CreatedKey
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if p.OrgID == "" {
			org, env, err := defaultTenant(ctx, tx, now)
			if err != nil {
				return err
			}
			p.OrgID = org
			if p.EnvID == "" {
				p.EnvID = env
			}
		}
		if p.EnvID == "" && p.Test {
			env, err := testEnvironment(ctx, tx, p.OrgID, now)
			if err != nil {
				return err
			}
			p.EnvID = env
		}
		if p.EnvID == "" {
			if err := tx.QueryRow(ctx, `SELECT id FROM environments WHERE org_id = $1 ORDER BY created_at LIMIT 1`, p.OrgID).Scan(&p.EnvID); err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return domain.Errorf(domain.ENotFound, "Environment not found")
				}
				return err
			}
		}
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM environments WHERE id = $1 AND org_id = $2)`, p.EnvID, p.OrgID).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return domain.Errorf(domain.ENotFound, "Environment not found")
		}
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		prefix := "hs_live_"
		if p.Test {
			prefix = "hs_test_"
		}
		key := prefix + hex.EncodeToString(raw)
		out = CreatedKey{ID: kit.NewID(), Name: p.Name, Key: key, KeyPrefix: key[:12], Scopes: p.Scopes, OrgID: p.OrgID, EnvID: p.EnvID, CreatedAt: kit.ISOTime(now)}
		actor := p.Actor
		if actor == "" {
			actor = "cli"
		}
		if _, err := store.Append(ctx, tx, eventstore.StreamAppend{
			StreamType: domain.StreamAPIKey, StreamID: out.ID, OrgID: p.OrgID, EnvID: p.EnvID, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvAPIKeyCreated, Payload: map[string]any{"id": out.ID, "name": p.Name, "key_prefix": out.KeyPrefix}, Metadata: eventstore.Metadata{Actor: actor}}},
		}); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO api_keys (id, org_id, env_id, name, key_hash, key_prefix, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			out.ID, p.OrgID, p.EnvID, p.Name, secrets.Hash(key), out.KeyPrefix, p.Scopes, now)
		return err
	})
	if err != nil {
		return CreatedKey{}, fmt.Errorf("create api key: %w", err)
	}
	return out, nil
}

// defaultTenant returns the first organization and environment, creating
// "Default" ones when the database has none.
func defaultTenant(ctx context.Context, tx pgx.Tx, now time.Time) (string, string, error) {
	var org, env string
	err := tx.QueryRow(ctx, `SELECT o.id, e.id FROM organizations o JOIN environments e ON e.org_id = o.id ORDER BY o.created_at, e.created_at LIMIT 1`).Scan(&org, &env)
	if err == nil {
		return org, env, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", "", err
	}
	org, env = kit.NewID(), kit.NewID()
	if _, err := tx.Exec(ctx, `INSERT INTO organizations (id, name, created_at) VALUES ($1, 'Default', $2)`, org, now); err != nil {
		return "", "", err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO environments (id, org_id, name, slug, created_at) VALUES ($1, $2, 'Production', 'production', $3)`, env, org, now); err != nil {
		return "", "", err
	}
	return org, env, nil
}

// CreateTenant creates an organization with one environment (tests, tooling).
func CreateTenant(ctx context.Context, pool *pgxpool.Pool, name string, now time.Time) (orgID, envID string, err error) {
	orgID, envID = kit.NewID(), kit.NewID()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)`, orgID, name, now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO environments (id, org_id, name, slug, created_at) VALUES ($1, $2, 'Production', 'production', $3)`, envID, orgID, now)
		return err
	})
	return orgID, envID, err
}

// HasAPIKeys reports whether any API key exists (first-run bootstrap).
func HasAPIKeys(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var ok bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys)`).Scan(&ok)
	return ok, err
}
