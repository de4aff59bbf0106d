-- hookstream:no-transaction
-- The scheduler's consumer group reads only RetryRequested while the engine
-- runs (every other job row is written by its writer in the same
-- transaction). This partial index holds just those events in commit order,
-- so the group's read is a bounded range scan of it, however much else the
-- log holds, and costs other appends nothing. Its predicate must list
-- projections.SchedulerLiveEvents (a test checks it).
-- Built CONCURRENTLY: on a large events table a plain build would hold back
-- every append (ingest) until it finished. A build cut short leaves an
-- invalid index, dropped before building again.
DROP INDEX CONCURRENTLY IF EXISTS events_scheduler_live_idx;
CREATE INDEX CONCURRENTLY events_scheduler_live_idx ON events (transaction_id, global_position)
    WHERE event_type = 'RetryRequested';
