-- Ingest verification, IP lists and dedup on sources.
ALTER TABLE sources
    ADD COLUMN verification_enabled boolean NOT NULL DEFAULT false,
    ADD COLUMN verification_type    text,
    ADD COLUMN verification_secret  text,
    ADD COLUMN verification_header  text,
    ADD COLUMN dedup_enabled        boolean NOT NULL DEFAULT false,
    ADD COLUMN dedup_strategy       text,
    ADD COLUMN dedup_field          text,
    ADD COLUMN dedup_window_seconds integer NOT NULL DEFAULT 300,
    ADD COLUMN ip_allowlist         jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN ip_denylist          jsonb NOT NULL DEFAULT '[]';

-- Dedup keys seen within their window. A key is claimed in the same
-- transaction as the event that claims it.
CREATE TABLE dedup_keys (
    source_id  text NOT NULL,
    key        text NOT NULL,
    event_id   text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source_id, key)
);

ALTER TABLE events_view
    ADD COLUMN verification_status text NOT NULL DEFAULT 'none',
    ADD COLUMN dedup_status        text NOT NULL DEFAULT 'unique',
    ADD COLUMN dedup_hash          text;

-- Outbound signing, the circuit breaker, and why a destination was disabled.
ALTER TABLE destinations
    ADD COLUMN signing_config              jsonb,
    ADD COLUMN signing_previous_secret     text,
    ADD COLUMN signing_previous_expires_at timestamptz,
    ADD COLUMN circuit_breaker_enabled     boolean NOT NULL DEFAULT true,
    ADD COLUMN circuit_breaker_threshold   integer NOT NULL DEFAULT 5,
    ADD COLUMN circuit_breaker_reset_ms    integer NOT NULL DEFAULT 60000,
    ADD COLUMN disabled_reason             text;

-- Each destination's circuit: written in the same transaction as the
-- attempts that move it and the Circuit* events that record the transitions.
CREATE TABLE destination_circuits (
    destination_id     text PRIMARY KEY,
    org_id             text NOT NULL,
    env_id             text NOT NULL,
    state              text NOT NULL DEFAULT 'closed',   -- closed | open | half_open
    failure_count      integer NOT NULL DEFAULT 0,
    opened_at          timestamptz,
    last_transition_at timestamptz,
    probe_delivery_id  text                              -- the half-open circuit's one probe
);

-- Issues: failures grouped per destination and error class.
CREATE TABLE issues (
    id                 text PRIMARY KEY,
    org_id             text NOT NULL,
    env_id             text NOT NULL,
    destination_id     text NOT NULL,
    destination_name   text,
    fingerprint        text NOT NULL,                    -- destination_id:error_type
    error_type         text NOT NULL,                    -- http_4xx | http_5xx | timeout | network | circuit_open
    title              text NOT NULL,
    status             text NOT NULL,                    -- open | acknowledged | resolved
    snoozed_until      timestamptz,
    occurrence_count   integer NOT NULL,
    first_seen_at      timestamptz NOT NULL,
    last_seen_at       timestamptz NOT NULL,
    resolved_at        timestamptz,
    last_attempt_id    text,
    last_event_id      text,
    last_error         text,
    last_status_code   integer,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE UNIQUE INDEX issues_unresolved_idx ON issues (fingerprint) WHERE status <> 'resolved';
CREATE INDEX issues_tenant_idx ON issues (org_id, env_id, status, last_seen_at DESC);

-- The deliveries an issue groups (its retry endpoint retries them).
CREATE TABLE issue_deliveries (
    issue_id    text NOT NULL,
    delivery_id text NOT NULL,
    attempt_id  text,
    seen_at     timestamptz NOT NULL,
    PRIMARY KEY (issue_id, delivery_id)
);

INSERT INTO destination_circuits (destination_id, org_id, env_id) SELECT id, org_id, env_id FROM destinations;
