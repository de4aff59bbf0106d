-- hookstream:no-transaction
-- projected_deliveries is the attempts projection's look-up of a delivery's
-- event, route and names, read by delivery_id only (its primary key): by the
-- projector and the rebuild when they write attempt rows, by the attempts
-- list's delivery filter, and by the history pass's deletes. No statement
-- reads it by destination or connection, yet every new delivery paid an
-- entry in both of these indexes (about 160 bytes of WAL a webhook).
-- Dropped CONCURRENTLY: the projector goes on meanwhile (IF EXISTS: safe to re-run).
DROP INDEX CONCURRENTLY IF EXISTS projected_deliveries_destination_idx;
DROP INDEX CONCURRENTLY IF EXISTS projected_deliveries_connection_idx;
