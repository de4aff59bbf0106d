-- Retention (issue 15): webhook payloads expire per environment; the log
-- keeps every event's metadata, ids, sizes and a hash of each body.

-- Per environment: how long payloads are kept (default 30 days), whether
-- they are archived (NDJSON, under serve's --archive-dir) before they go,
-- and the environment's ingest rate limit (webhooks/s; NULL: none).
ALTER TABLE environments
    ADD COLUMN payload_retention_seconds bigint  NOT NULL DEFAULT 2592000 CHECK (payload_retention_seconds >= 60),
    ADD COLUMN archive_payloads          boolean NOT NULL DEFAULT false,
    ADD COLUMN ingest_rate_limit         integer CHECK (ingest_rate_limit > 0);
-- A source's own ingest rate limit (webhooks/s; NULL: none).
ALTER TABLE sources ADD COLUMN rate_limit integer CHECK (rate_limit > 0);

-- Each environment's expiry: every payload at a global_position below
-- scan_from is expired, so a run reads only the log written since (by
-- primary key); the oldest payload still kept, and running totals.
CREATE TABLE retention_state (
    org_id            text        NOT NULL,
    env_id            text        NOT NULL,
    scan_from         bigint      NOT NULL DEFAULT 0,
    oldest_payload_at timestamptz,
    events_expired    bigint      NOT NULL DEFAULT 0,
    attempts_expired  bigint      NOT NULL DEFAULT 0,
    bytes_reclaimed   bigint      NOT NULL DEFAULT 0,
    last_run          timestamptz NOT NULL,
    PRIMARY KEY (org_id, env_id)
);

-- What an expired payload keeps: an EventReceived loses its body, headers
-- and query (it keeps body_size and gains body_sha256); a DeliveryAttempted
-- loses the request headers and the response headers and body. Both gain
-- payload_expired_at.
CREATE FUNCTION hookstream_expired_payload(event_type text, payload jsonb, at timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE event_type
        WHEN 'EventReceived' THEN (payload - ARRAY['body_b64', 'headers', 'query', 'raw_query', 'raw_query_b64', 'headers_b64'])
            || jsonb_build_object('payload_expired_at', at,
                'body_sha256', encode(sha256(decode(coalesce(payload->>'body_b64', ''), 'base64')), 'hex'))
        WHEN 'DeliveryAttempted' THEN (payload - ARRAY['request_headers', 'response_headers', 'response_body'])
            || jsonb_build_object('payload_expired_at', at)
    END
$$;

-- Events stay immutable, with one exception: the retention job (which sets
-- hookstream.retention for its transaction) may replace the payload of an
-- EventReceived or DeliveryAttempted by its expired form, once. Every other
-- column, and every other change, is still refused.
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
    RAISE EXCEPTION 'events are immutable: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
