-- hookstream:no-transaction
-- A history pass (0021) removes an issue's links to the deliveries it
-- removes, by delivery. Built CONCURRENTLY: issue recording goes on while a
-- large table is indexed. A build cut short leaves an invalid index, dropped
-- before building again.
DROP INDEX CONCURRENTLY IF EXISTS issue_deliveries_delivery_idx;
CREATE INDEX CONCURRENTLY issue_deliveries_delivery_idx ON issue_deliveries (delivery_id);
