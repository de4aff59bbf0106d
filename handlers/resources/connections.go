package resources

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
)

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
	SourceID      *string                          `json:"source_id"`
	DestinationID *string                          `json:"destination_id"`
	Name          *string                          `json:"name"`
	Description   *string                          `json:"description"`
	Enabled       *kit.Flag                        `json:"enabled"`
	Status        *string                          `json:"status"`
	FilterRules   *kit.JSONOr[[]domain.FilterRule] `json:"filter_rules"`
	OrgID         *string                          `json:"org_id"`
	EnvID         *string                          `json:"env_id"`
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
func (s *Registry) CreateConnection(ctx context.Context, t domain.Tenant, in ConnectionInput, rid string) (Connection, error) {
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
	// hookstream's message, then which of the two is missing.
	if _, err := s.GetSource(ctx, t, *in.SourceID); err != nil {
		return Connection{}, kit.RemapNotFound(err, fmt.Sprintf("Source or destination not found: no source %q in this environment", kit.Clip(*in.SourceID, 64)))
	}
	if _, _, err := s.getDestination(ctx, t, *in.DestinationID); err != nil {
		return Connection{}, kit.RemapNotFound(err, fmt.Sprintf("Source or destination not found: no destination %q in this environment", kit.Clip(*in.DestinationID, 64)))
	}
	rules := []domain.FilterRule{}
	if in.FilterRules != nil {
		rules = in.FilterRules.V
	}
	if err := domain.ValidateFilterRules(rules); err != nil {
		return Connection{}, err
	}
	enabled, status := true, "active"
	if in.Enabled != nil {
		enabled = bool(*in.Enabled)
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
func (s *Registry) GetConnection(ctx context.Context, t domain.Tenant, id string) (Connection, error) {
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

// ListConnections lists a page of the tenant's connections, newest first,
// optionally by source, destination or status.
func (s *Registry) ListConnections(ctx context.Context, t domain.Tenant, sourceID, destinationID, status string, pg Page) ([]Connection, Page, error) {
	rows, err := s.pool.Query(ctx, connSelect+` WHERE c.org_id = $1 AND c.env_id = $2 AND ($3 = '' OR c.source_id = $3)
		AND ($4 = '' OR c.destination_id = $4) AND ($5 = '' OR c.status = $5) AND ($6 = '' OR c.id < $6) ORDER BY c.id DESC LIMIT $7`,
		t.OrgID, t.EnvID, sourceID, destinationID, status, pg.After, pg.Limit+1)
	out, err := kit.CollectRows(rows, err, scanConnection)
	if err != nil {
		return nil, pg, fmt.Errorf("list connections: %w", err)
	}
	return pageOf(out, pg, func(c Connection) string { return c.ID })
}

// UpdateConnection applies a partial update (source and destination are fixed).
func (s *Registry) UpdateConnection(ctx context.Context, t domain.Tenant, id string, in ConnectionInput, rid string) (Connection, error) {
	cur, err := s.GetConnection(ctx, t, id)
	if err != nil {
		return Connection{}, err
	}
	if in.OrgID != nil || in.EnvID != nil || in.SourceID != nil || in.DestinationID != nil {
		return Connection{}, kit.Invalidf("'source_id', 'destination_id', 'org_id' and 'env_id' cannot be changed")
	}
	name, desc, enabled, status := cur.Name, cur.Description, cur.Enabled == 1, cur.Status
	var rules []domain.FilterRule
	if err := json.Unmarshal([]byte(cur.FilterRules), &rules); err != nil {
		return Connection{}, fmt.Errorf("update connection: stored filter rules: %w", err)
	}
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
		enabled = bool(*in.Enabled)
	}
	if in.Status != nil {
		if err := domain.CheckStatus(*in.Status); err != nil {
			return Connection{}, err
		}
		status = *in.Status
	}
	if in.FilterRules != nil {
		if err := domain.ValidateFilterRules(in.FilterRules.V); err != nil {
			return Connection{}, err
		}
		rules = in.FilterRules.V
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
func (s *Registry) DeleteConnection(ctx context.Context, t domain.Tenant, id, rid string) error {
	if _, err := s.GetConnection(ctx, t, id); err != nil {
		return err
	}
	return s.deleteConfig(ctx, t, domain.StreamConnection, domain.EvConnectionDeleted, "connections", "", "Connection", id, rid)
}
