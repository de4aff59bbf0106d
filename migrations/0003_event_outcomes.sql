-- Read model: each delivery's latest outcome, from which an event's status is derived
-- (delivered when all its deliveries succeeded, failed while any is dead-lettered).
CREATE TABLE event_delivery_outcomes (
    delivery_id text PRIMARY KEY,
    event_id    text NOT NULL,
    outcome     text NOT NULL,   -- success | dlq
    version     bigint NOT NULL  -- delivery stream version of the outcome
);
CREATE INDEX event_delivery_outcomes_event_idx ON event_delivery_outcomes (event_id);
CREATE INDEX events_view_status_idx ON events_view (org_id, env_id, status, received_at DESC);
