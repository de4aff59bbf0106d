-- The event store: one append-only table that is the system of record and the
-- topic every Watermill consumer group reads.
CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    org_id          text        NOT NULL DEFAULT '',
    env_id          text        NOT NULL DEFAULT '',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- Commit-order reads: (transaction_id, global_position) is the cursor.
CREATE INDEX events_commit_order_idx ON events (transaction_id, global_position);
CREATE INDEX events_type_idx ON events (event_type, global_position);

-- Stored events are immutable: no UPDATE, DELETE or TRUNCATE, whoever asks.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- Offsets of the Watermill consumer groups that read the events table.
CREATE TABLE consumer_offsets (
    consumer_group                varchar(255) PRIMARY KEY,
    offset_acked                  bigint,
    last_processed_transaction_id xid8 NOT NULL
);
