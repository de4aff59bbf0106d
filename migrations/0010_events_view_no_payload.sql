-- events_view no longer copies what the log holds: an event's headers, query
-- and body are read from its EventReceived (GET /v1/events/{id}), so the
-- read model's rows are narrow and its status update rewrites little.
SET LOCAL lock_timeout = '10s';
ALTER TABLE events_view DROP COLUMN headers, DROP COLUMN query_params, DROP COLUMN body_b64;
