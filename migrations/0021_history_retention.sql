-- History retention (issue 15): an environment may bound the log itself.
-- Payload expiry (0015) keeps every event's metadata forever, about 7 KB a
-- webhook with its read-model rows and indexes, so the disk never levels
-- off. An environment with history_retention_seconds set has each webhook
-- removed whole once it finished and its newest event is that old: its
-- EventReceived, its deliveries' streams and their read-model rows, in one
-- transaction that records a HistoryExpired event. NULL (the default)
-- keeps the history forever.
ALTER TABLE environments
    ADD COLUMN history_retention_seconds bigint CHECK (history_retention_seconds >= 60);

-- Each environment's history pass: every webhook received below
-- history_from is gone or held (history_held), and running totals.
ALTER TABLE retention_state
    ADD COLUMN history_from       bigint NOT NULL DEFAULT 0,
    ADD COLUMN oldest_event_at    timestamptz,
    ADD COLUMN webhooks_removed   bigint NOT NULL DEFAULT 0,
    ADD COLUMN deliveries_removed bigint NOT NULL DEFAULT 0,
    ADD COLUMN log_rows_removed   bigint NOT NULL DEFAULT 0,
    -- where the next pass goes on re-checking history_held (it wraps
    -- around), so webhooks held for a long time do not starve the others
    ADD COLUMN history_held_from  bigint NOT NULL DEFAULT 0,
    -- the same for retention_held (payloads held past their cutoff)
    ADD COLUMN payload_held_from  bigint NOT NULL DEFAULT 0;

-- Webhooks a history pass had to keep past their cutoff (a delivery still
-- live, an event of theirs newer than the cutoff, a read model not yet past
-- them): later passes re-check these EventReceived positions.
CREATE TABLE history_held (
    org_id text   NOT NULL,
    env_id text   NOT NULL,
    pos    bigint NOT NULL,
    PRIMARY KEY (org_id, env_id, pos)
);

-- Events stay immutable, with two exceptions, both made by the retention
-- pass alone (it sets hookstream.retention for its transaction):
--   'on':      a payload replaced by its expired form, once (0015);
--   'history': a webhook's events (stream types event and delivery)
--              deleted, in an environment that bounds its history.
-- Every other change, and TRUNCATE, is still refused.
CREATE OR REPLACE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('hookstream.retention', true) = 'on'
       AND OLD.event_type IN ('EventReceived', 'DeliveryAttempted')
       AND NOT OLD.payload ? 'payload_expired_at'
       AND NEW.payload = hookstream_expired_payload(OLD.event_type, OLD.payload, (NEW.payload->>'payload_expired_at')::timestamptz)
       AND (NEW.global_position, NEW.transaction_id, NEW.event_id, NEW.stream_type, NEW.stream_id, NEW.stream_version,
            NEW.event_type, NEW.schema_version, NEW.metadata, NEW.org_id, NEW.env_id, NEW.recorded_at)
           IS NOT DISTINCT FROM
           (OLD.global_position, OLD.transaction_id, OLD.event_id, OLD.stream_type, OLD.stream_id, OLD.stream_version,
            OLD.event_type, OLD.schema_version, OLD.metadata, OLD.org_id, OLD.env_id, OLD.recorded_at) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('hookstream.retention', true) = 'history'
       AND OLD.stream_type IN ('event', 'delivery')
       AND EXISTS (SELECT 1 FROM environments v WHERE v.id = OLD.env_id AND v.org_id = OLD.org_id
                   AND v.history_retention_seconds IS NOT NULL) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are immutable: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
