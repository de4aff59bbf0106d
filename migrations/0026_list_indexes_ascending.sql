-- hookstream:no-transaction
-- The list indexes in ascending order. Built descending, every new row's
-- entry went to the left edge of its tenant's range, and a full page split
-- half and half there (the half left behind is never filled again): at 150
-- webhooks/s such splits wrote 530 bytes of WAL a webhook for these three
-- indexes, and left them about half empty. Ascending, a new entry goes to the
-- end of its range; on the index's rightmost page a split leaves the old page
-- full and writes only the new item's side. The lists read them backward for
-- newest first (ORDER BY … DESC, every column the same way), as fast.
-- Each index is built beside the old one, then swapped in by name; every
-- statement is safe to run again after an interruption.
DROP INDEX CONCURRENTLY IF EXISTS delivery_attempts_list_asc_idx;
CREATE INDEX CONCURRENTLY delivery_attempts_list_asc_idx ON delivery_attempts (org_id, env_id, created_at, id);
DROP INDEX CONCURRENTLY IF EXISTS delivery_attempts_list_idx;
ALTER INDEX delivery_attempts_list_asc_idx RENAME TO delivery_attempts_list_idx;
DROP INDEX CONCURRENTLY IF EXISTS events_view_list_asc_idx;
CREATE INDEX CONCURRENTLY events_view_list_asc_idx ON events_view (org_id, env_id, received_at, id);
DROP INDEX CONCURRENTLY IF EXISTS events_view_list_idx;
ALTER INDEX events_view_list_asc_idx RENAME TO events_view_list_idx;
DROP INDEX CONCURRENTLY IF EXISTS events_view_status_asc_idx;
CREATE INDEX CONCURRENTLY events_view_status_asc_idx ON events_view (org_id, env_id, status, received_at);
DROP INDEX CONCURRENTLY IF EXISTS events_view_status_idx;
ALTER INDEX events_view_status_asc_idx RENAME TO events_view_status_idx;
