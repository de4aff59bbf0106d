-- Tenancy and credentials.
CREATE TABLE organizations (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE environments (
    id         text PRIMARY KEY,
    org_id     text NOT NULL REFERENCES organizations (id),
    name       text NOT NULL,
    slug       text NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (org_id, slug)
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES organizations (id),
    env_id       text NOT NULL REFERENCES environments (id),
    name         text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,   -- SHA-256 of the key; the key itself is shown once
    key_prefix   text NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,          -- SHA-256 of better-auth.session_token
    org_id     text NOT NULL REFERENCES organizations (id),
    env_id     text NOT NULL REFERENCES environments (id),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL
);

-- Configuration: current state, written in the same transaction as its event.
CREATE TABLE sources (
    id          text PRIMARY KEY,
    org_id      text NOT NULL,
    env_id      text NOT NULL,
    name        text NOT NULL,
    slug        text NOT NULL,
    description text,
    status      text NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX sources_tenant_idx ON sources (org_id, env_id, created_at DESC);

CREATE TABLE destinations (
    id                 text PRIMARY KEY,
    org_id             text NOT NULL,
    env_id             text NOT NULL,
    name               text NOT NULL,
    slug               text NOT NULL,
    url                text NOT NULL,
    method             text NOT NULL DEFAULT 'POST',
    headers            jsonb NOT NULL DEFAULT '{}',
    timeout_ms         integer NOT NULL DEFAULT 30000,
    retry_enabled      boolean NOT NULL DEFAULT true,
    retry_max_attempts integer NOT NULL DEFAULT 5,
    retry_backoff_type text NOT NULL DEFAULT 'exponential',
    retry_intervals    jsonb NOT NULL DEFAULT '[30,300,1800,7200,86400]',
    status             text NOT NULL DEFAULT 'active',
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX destinations_tenant_idx ON destinations (org_id, env_id, created_at DESC);

CREATE TABLE connections (
    id             text PRIMARY KEY,
    org_id         text NOT NULL,
    env_id         text NOT NULL,
    source_id      text NOT NULL REFERENCES sources (id),
    destination_id text NOT NULL REFERENCES destinations (id),
    name           text NOT NULL,
    description    text,
    enabled        boolean NOT NULL DEFAULT true,
    status         text NOT NULL DEFAULT 'active',
    filter_rules   jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX connections_source_idx ON connections (source_id);
CREATE INDEX connections_destination_idx ON connections (destination_id);
CREATE INDEX connections_tenant_idx ON connections (org_id, env_id, created_at DESC);

-- The scheduler's state: one row per delivery, the next attempt to make.
-- version is the delivery stream version the row reflects; writers only move it forward.
CREATE TABLE delivery_jobs (
    delivery_id     text PRIMARY KEY,
    org_id          text NOT NULL,
    env_id          text NOT NULL,
    event_id        text NOT NULL,
    connection_id   text NOT NULL,
    destination_id  text NOT NULL,
    received_uuid   uuid NOT NULL,          -- event_id (store) of the EventReceived that holds the body
    state           text NOT NULL,          -- scheduled | done
    attempt_id      text,
    attempt_number  integer NOT NULL,
    trigger_type    text NOT NULL,
    due_at          timestamptz NOT NULL,
    lease_until     timestamptz,
    leased_by       text,
    version         bigint NOT NULL
);
CREATE INDEX delivery_jobs_due_idx ON delivery_jobs (due_at) WHERE state = 'scheduled';

-- Read model: one row per delivery attempt, the seed's delivery_attempt object.
CREATE TABLE delivery_attempts (
    id                text PRIMARY KEY,
    org_id            text NOT NULL,
    env_id            text NOT NULL,
    delivery_id       text NOT NULL,
    event_id          text NOT NULL,
    connection_id     text NOT NULL,
    destination_id    text NOT NULL,
    request_url       text NOT NULL,
    request_method    text NOT NULL,
    request_headers   text,
    request_body_size integer NOT NULL DEFAULT 0,
    response_status   integer,
    response_headers  text,
    response_body     text,
    duration_ms       integer,
    status            text NOT NULL,
    error             text,
    created_at        timestamptz NOT NULL,
    attempt_number    integer,
    next_retry_at     timestamptz,
    is_dlq            integer NOT NULL DEFAULT 0,
    dlq_at            timestamptz,
    trigger_type      text,
    connection_name   text,
    destination_name  text
);
CREATE INDEX delivery_attempts_list_idx ON delivery_attempts (org_id, env_id, created_at DESC, id DESC);
CREATE INDEX delivery_attempts_event_idx ON delivery_attempts (event_id);
CREATE INDEX delivery_attempts_delivery_idx ON delivery_attempts (delivery_id);
CREATE INDEX delivery_attempts_destination_idx ON delivery_attempts (destination_id);
CREATE INDEX delivery_attempts_connection_idx ON delivery_attempts (connection_id);

-- Read model helper: each delivery's routing and current display names.
CREATE TABLE projected_deliveries (
    delivery_id      text PRIMARY KEY,
    event_id         text NOT NULL,
    connection_id    text NOT NULL,
    destination_id   text NOT NULL,
    connection_name  text,
    destination_name text
);
CREATE INDEX projected_deliveries_destination_idx ON projected_deliveries (destination_id);
CREATE INDEX projected_deliveries_connection_idx ON projected_deliveries (connection_id);

-- Read model: ingested events for listing.
CREATE TABLE events_view (
    id             text PRIMARY KEY,
    org_id         text NOT NULL,
    env_id         text NOT NULL,
    source_id      text NOT NULL,
    source_name    text,
    source_slug    text,
    method         text NOT NULL,
    content_type   text,
    source_ip      text,
    headers        jsonb NOT NULL,
    query_params   jsonb NOT NULL,
    body_b64       text NOT NULL,
    payload_size   integer NOT NULL,
    status         text NOT NULL,
    delivery_count integer NOT NULL,
    received_at    timestamptz NOT NULL
);
CREATE INDEX events_view_list_idx ON events_view (org_id, env_id, received_at DESC, id DESC);
