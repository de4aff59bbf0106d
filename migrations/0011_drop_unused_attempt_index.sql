-- No query reads delivery_attempts by delivery_id (attempts are found by
-- id, tenant, event, connection or destination): the index only cost every
-- attempt row one more index entry.
SET LOCAL lock_timeout = '10s';
DROP INDEX delivery_attempts_delivery_idx;
