package handlers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// Tenant is who a request acts for: one organization and one environment.
type Tenant struct {
	OrgID string
	EnvID string
	Actor string // "api_key:<id>" or "session"
}

// sessionCookie is Better Auth's session cookie name.
const sessionCookie = "better-auth.session_token"

func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// authenticate resolves the request's credentials: X-API-Key, the same key as
// a Bearer token, then the session cookie (also when a key was given but is
// invalid, as hookstream's combinedAuth does).
func authenticate(ctx context.Context, pool *pgxpool.Pool, r *http.Request, now time.Time) (Tenant, error) {
	key := r.Header.Get("X-API-Key")
	if key == "" {
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			key = strings.TrimSpace(h[7:])
		}
	}
	if key != "" {
		var t Tenant
		var id string
		err := pool.QueryRow(ctx, `SELECT id, org_id, env_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL`, hashSecret(key)).Scan(&id, &t.OrgID, &t.EnvID)
		if err == nil {
			t.Actor = "api_key:" + id
			return t, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return Tenant{}, fmt.Errorf("look up api key: %w", err)
		}
	}
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		var t Tenant
		err := pool.QueryRow(ctx, `SELECT org_id, env_id FROM sessions WHERE token_hash = $1 AND expires_at > $2`, hashSecret(c.Value), now).Scan(&t.OrgID, &t.EnvID)
		if err == nil {
			t.Actor = "session"
			return t, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return Tenant{}, fmt.Errorf("look up session: %w", err)
		}
	}
	return Tenant{}, domain.Errorf(domain.EUnauthorized, "Unauthorized")
}

// CreatedKey is a new API key; Key is shown once and never stored.
type CreatedKey struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Key       string    `json:"key"`
	KeyPrefix string    `json:"key_prefix"`
	OrgID     string    `json:"org_id"`
	EnvID     string    `json:"env_id"`
	CreatedAt time.Time `json:"created_at"`
}

// KeyParams describe a key to create. Empty OrgID/EnvID pick the first
// organization and its first environment, creating defaults when none exist.
type KeyParams struct {
	Name  string
	OrgID string
	EnvID string
	Test  bool // hs_test_ instead of hs_live_
}

// CreateAPIKey creates an API key (and records APIKeyCreated, without the secret).
// It returns ENotFound when the organization or environment does not exist.
func CreateAPIKey(ctx context.Context, pool *pgxpool.Pool, store *eventstore.Store, p KeyParams, now time.Time) (CreatedKey, error) {
	if store == nil {
		store = eventstore.New(nil)
	}
	if strings.TrimSpace(p.Name) == "" {
		return CreatedKey{}, domain.Errorf(domain.EInvalid, "key name is required")
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
		out = CreatedKey{ID: newID(), Name: p.Name, Key: key, KeyPrefix: key[:12], OrgID: p.OrgID, EnvID: p.EnvID, CreatedAt: now.UTC()}
		if _, err := store.Append(ctx, tx, eventstore.StreamAppend{
			StreamType: domain.StreamAPIKey, StreamID: out.ID, OrgID: p.OrgID, EnvID: p.EnvID, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvAPIKeyCreated, Payload: map[string]any{"id": out.ID, "name": p.Name, "key_prefix": out.KeyPrefix}, Metadata: eventstore.Metadata{Actor: "cli"}}},
		}); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO api_keys (id, org_id, env_id, name, key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			out.ID, p.OrgID, p.EnvID, p.Name, hashSecret(key), out.KeyPrefix, now)
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
	org, env = newID(), newID()
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
	orgID, envID = newID(), newID()
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
