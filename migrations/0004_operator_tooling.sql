-- Replay jobs: each replay's parameters and how far it has released its
-- events, written in the same transaction as the replay stream's events.
-- Progress (processed, succeeded, failed) is read from delivery_attempts.
CREATE TABLE replay_jobs (
    id             text PRIMARY KEY,
    org_id         text NOT NULL,
    env_id         text NOT NULL,
    destination_id text NOT NULL,
    source_id      text,
    connection_id  text,
    from_at        timestamptz NOT NULL,
    to_at          timestamptz NOT NULL,
    rate_limit     integer NOT NULL,
    max_events     integer NOT NULL,
    status         text NOT NULL,            -- running | failed (completed is derived from progress)
    error          text,
    total          integer NOT NULL,
    released       integer NOT NULL DEFAULT 0,
    next_batch_at  timestamptz NOT NULL,     -- when the next batch may go (the runner skips the job until then)
    created_at     timestamptz NOT NULL,
    failed_at      timestamptz
);
CREATE INDEX replay_jobs_running_idx ON replay_jobs (next_batch_at) WHERE status = 'running';

-- Deliveries made by a replay carry its id, so its progress is a count.
ALTER TABLE projected_deliveries ADD COLUMN replay_id text;
ALTER TABLE delivery_attempts ADD COLUMN replay_id text;
CREATE INDEX delivery_attempts_replay_idx ON delivery_attempts (replay_id) WHERE replay_id IS NOT NULL;

-- The last error each consumer group's handler returned (projections status).
CREATE TABLE consumer_errors (
    consumer_group text PRIMARY KEY,
    error          text NOT NULL,
    event_id       text,
    failed_at      timestamptz NOT NULL,
    failures       bigint NOT NULL DEFAULT 1
);

-- Time-range export and audit --as-of: recorded_at follows global_position,
-- so a BRIN index is tiny and narrows a range scan to the right blocks.
CREATE INDEX events_recorded_at_brin ON events USING brin (recorded_at);

-- A payload timestamp as the projections store it: Go writes time.Time
-- truncated to microseconds, while PostgreSQL rounds the nanoseconds of an
-- RFC 3339 string. Set-based rebuilds read payload times through this, so a
-- rebuilt row equals the row the live projection wrote.
CREATE FUNCTION hs_ts(text) RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT regexp_replace($1, '(\.[0-9]{6})[0-9]+', '\1')::timestamptz $$;

-- Event-level retry finds an event's deliveries here: the job row is written
-- in the same transaction as the delivery's first event, never behind it.
CREATE INDEX delivery_jobs_event_idx ON delivery_jobs (event_id);
