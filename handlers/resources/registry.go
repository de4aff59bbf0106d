// Package resources is the configuration API: sources, destinations and
// connections (their validation, event streams and tables), and the sealing
// of their secrets at rest.
package resources

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// Params configure the registry.
type Params struct {
	Pool      *pgxpool.Pool
	Store     *eventstore.Store
	Log       *slog.Logger
	Now       func() time.Time
	PublicURL string // base of ingest URLs, e.g. http://127.0.0.1:8080
	// Secrets encrypts signing and verification secrets, credential headers
	// and URL userinfo at rest; without a key, storing one is refused.
	Secrets *secretbox.Keyring
	// Outbound refuses destination URLs whose host is a disallowed address
	// literal (the zero policy refuses every non-public range).
	Outbound outbound.Policy
	// Changed, when set, is called after every configuration write commits
	// (ingest forgets its cached routes).
	Changed func()
}

// Registry is the sources, destinations and connections of every tenant.
type Registry struct {
	p     Params
	pool  *pgxpool.Pool
	store *eventstore.Store
	now   func() time.Time
}

// New returns the registry; p.Now and p.Log default to the clock and slog's default.
func New(p Params) *Registry {
	kit.Defaults(&p.Now, &p.Log, &p.Store)
	return &Registry{p: p, pool: p.Pool, store: p.Store, now: func() time.Time { return p.Now().UTC() }}
}

// configTx runs a configuration write in a transaction, then forgets the
// routes ingest cached (a lookup during the write may have cached the rows
// it replaces).
func (s *Registry) configTx(ctx context.Context, fn func(pgx.Tx) error) error {
	if s.p.Changed != nil {
		defer s.p.Changed()
	}
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// recordConfig appends a configuration event in tx (first write of the tx).
func (s *Registry) recordConfig(ctx context.Context, tx pgx.Tx, t domain.Tenant, streamType, id, evType string, payload any, requestID string) error {
	_, err := s.store.Append(ctx, tx, eventstore.StreamAppend{
		StreamType: streamType, StreamID: id, OrgID: t.OrgID, EnvID: t.EnvID, Expected: eventstore.AnyVersion,
		Events: []eventstore.NewEvent{{Type: evType, Payload: payload, Metadata: eventstore.Metadata{Actor: t.Actor, RequestID: requestID, CorrelationID: requestID}}},
	})
	return err
}

// slugMode says how a write checks its slug against its environment's others.
type slugMode int

const (
	// slugKept: the write leaves the slug as it was, unchecked (rows
	// stored before slugs were unique keep theirs until renamed).
	slugKept slugMode = iota
	// slugGiven: the client chose it; taken already is a 409.
	slugGiven
	// slugDerived: derived from the name; taken already gets the first
	// free -2, -3, …
	slugDerived
)

// slugModeFor is the mode of a write that sets slug (nil: unchanged) over old.
func slugModeFor(slug *string, old string) slugMode {
	if slug == nil || *slug == old {
		return slugKept
	}
	return slugGiven
}

// claimSlug makes slug unique among the environment's rows of table
// (sources or destinations) other than id, and returns the slug to store.
// A transaction lock per environment and table holds concurrent writers
// until commit, so two requests cannot both take one slug; an index on
// (org_id, env_id, slug) keeps the check one probe. It is a check rather
// than a unique index so that an upgrade never fails on duplicates stored
// before: they stay readable and only a write that sets a slug is checked.
func claimSlug(ctx context.Context, tx pgx.Tx, table, kind string, t domain.Tenant, id, slug string, mode slugMode) (string, error) {
	if mode == slugKept {
		return slug, nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('slug:' || $1 || ':' || $2 || ':' || $3))`, table, t.OrgID, t.EnvID); err != nil {
		return "", fmt.Errorf("lock slugs: %w", err)
	}
	taken := func(c string) (bool, error) {
		var found bool
		err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+table+` WHERE org_id = $1 AND env_id = $2 AND slug = $3 AND id <> $4)`,
			t.OrgID, t.EnvID, c, id).Scan(&found)
		return found, err
	}
	used, err := taken(slug)
	if err != nil || !used {
		return slug, err
	}
	if mode == slugGiven {
		return "", domain.Errorf(domain.EConflict, "Slug already exists: another %s of this environment has slug %q", kind, slug)
	}
	// The first free suffix; a name shared by many rows walks their count
	// once, through the index.
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE org_id = $1 AND env_id = $2 AND slug LIKE $3`,
		t.OrgID, t.EnvID, slug+"-%").Scan(&n); err != nil {
		return "", err
	}
	for i := 2; i <= n+2; i++ {
		suffix := fmt.Sprintf("-%d", i)
		base := slug
		if len(base)+len(suffix) > domain.SlugMaxLen {
			base = strings.TrimRight(base[:domain.SlugMaxLen-len(suffix)], "-")
		}
		if used, err := taken(base + suffix); err != nil || !used {
			return base + suffix, err
		}
	}
	return "", domain.Errorf(domain.EConflict, "Slug already exists: no free suffix for %q; choose a slug", slug)
}

// ---- sources ----

func checkTenantFields(t domain.Tenant, org, env *string) error {
	if org != nil && *org != t.OrgID {
		return domain.Errorf(domain.ENotFound, "Environment not found")
	}
	if env != nil && *env != t.EnvID {
		return domain.Errorf(domain.ENotFound, "Environment not found")
	}
	return nil
}

func (s *Registry) deleteConfig(ctx context.Context, t domain.Tenant, streamType, evType, table, connCol, kind, id, rid string) error {
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

// ---- connections ----

// The bodies PATCH accepts: the input, and the object's read-only fields,
// which a client sending back what it read may repeat unchanged (the API
// refuses them when they differ from the stored object). They describe the
// API document; requests are decoded into the inputs.

// SourcePatch is the body of PATCH /v1/sources/{id}.
type SourcePatch struct {
	SourceInput
	ID        *string `json:"id"`
	IngestURL *string `json:"ingest_url"`
	CreatedAt *string `json:"created_at"`
	UpdatedAt *string `json:"updated_at"`
}

// DestinationPatch is the body of PATCH /v1/destinations/{id}.
type DestinationPatch struct {
	DestinationInput
	ID             *string `json:"id"`
	DisabledReason *string `json:"disabled_reason"`
	CreatedAt      *string `json:"created_at"`
	UpdatedAt      *string `json:"updated_at"`
}

// ConnectionPatch is the body of PATCH /v1/connections/{id}.
type ConnectionPatch struct {
	ConnectionInput
	ID              *string `json:"id"`
	SourceName      *string `json:"source_name"`
	DestinationName *string `json:"destination_name"`
	CreatedAt       *string `json:"created_at"`
	UpdatedAt       *string `json:"updated_at"`
}

// Page is a page of a configuration list (hookstream's top-level cursor
// form): at most Limit items, newest first, after the item whose id is
// After. On the way out, After is the cursor of the next page and HasMore
// says there is one. Ids are UUIDv7, ordered by creation, so the cursor is
// stable while items are added.
type Page struct {
	Limit   int
	After   string
	HasMore bool
}

// pageOf cuts a list read with Limit+1 rows to the page and sets the cursor.
func pageOf[T any](items []T, pg Page, id func(T) string) ([]T, Page, error) {
	next := Page{Limit: pg.Limit}
	if len(items) > pg.Limit {
		items = items[:pg.Limit]
		next.HasMore = true
		next.After = id(items[len(items)-1])
	}
	return items, next, nil
}
