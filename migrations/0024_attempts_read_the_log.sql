-- delivery_attempts no longer copies what the log holds: an attempt's
-- request headers, response headers and response body are read from its
-- DeliveryAttempted (attempted_pos, that event's global position) when the
-- API shows the attempt, as events_view reads its webhook's body (0010).
-- Every attempt row was written with its copies (about 360 bytes per attempt
-- with an empty response body, up to the response bound with one), and
-- retention had to rewrite the row again to drop them; the expired event
-- now says the same by itself (its payload no longer has those fields).
SET LOCAL lock_timeout = '10s';
ALTER TABLE delivery_attempts ADD COLUMN attempted_pos bigint;
-- Existing attempts point at the event they were projected from: the last
-- DeliveryAttempted of their delivery's stream that names them. One pass
-- over the attempts made so far (pending ones have none), through the
-- stream's index.
UPDATE delivery_attempts a SET attempted_pos = (
    SELECT max(e.global_position) FROM events e
    WHERE e.stream_id = a.delivery_id AND e.event_type = 'DeliveryAttempted' AND e.payload->>'attempt_id' = a.id)
WHERE a.status <> 'pending';
ALTER TABLE delivery_attempts DROP COLUMN request_headers, DROP COLUMN response_headers, DROP COLUMN response_body;
