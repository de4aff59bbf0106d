-- The totals of the unfiltered events and delivery-attempts lists, per
-- environment, kept by statement triggers on the read models (rows are
-- never deleted from them, but a delete is counted too), so the first page
-- of GET /v1/events and /v1/delivery-attempts costs the same on a log of a
-- million webhooks as on an empty one. A rebuild swaps the tables and
-- recounts (projections.restoreTable).
CREATE TABLE list_counts (
    org_id text   NOT NULL,
    env_id text   NOT NULL,
    list   text   NOT NULL,  -- events | attempts
    n      bigint NOT NULL,
    PRIMARY KEY (org_id, env_id, list)
);

CREATE FUNCTION hookstream_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO list_counts (org_id, env_id, list, n)
        SELECT org_id, env_id, TG_ARGV[0], count(*) FROM counted_rows GROUP BY org_id, env_id
    ON CONFLICT (org_id, env_id, list) DO UPDATE SET n = list_counts.n + excluded.n;
    RETURN NULL;
END;
$$;

CREATE FUNCTION hookstream_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE list_counts c SET n = c.n - d.n
        FROM (SELECT org_id, env_id, count(*) AS n FROM counted_rows GROUP BY org_id, env_id) d
        WHERE c.org_id = d.org_id AND c.env_id = d.env_id AND c.list = TG_ARGV[0];
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_view_counted AFTER INSERT ON events_view REFERENCING NEW TABLE AS counted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookstream_count_inserted('events');
CREATE TRIGGER events_view_uncounted AFTER DELETE ON events_view REFERENCING OLD TABLE AS counted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookstream_count_deleted('events');
CREATE TRIGGER delivery_attempts_counted AFTER INSERT ON delivery_attempts REFERENCING NEW TABLE AS counted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookstream_count_inserted('attempts');
CREATE TRIGGER delivery_attempts_uncounted AFTER DELETE ON delivery_attempts REFERENCING OLD TABLE AS counted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookstream_count_deleted('attempts');

LOCK TABLE events_view, delivery_attempts IN SHARE MODE;
INSERT INTO list_counts SELECT org_id, env_id, 'events', count(*) FROM events_view GROUP BY org_id, env_id;
INSERT INTO list_counts SELECT org_id, env_id, 'attempts', count(*) FROM delivery_attempts GROUP BY org_id, env_id;
