-- Autovacuum for the hot tables (issue 15). The defaults wait for 20% of a
-- table to change, which on a large log means months between visits and
-- on a small queue means constant churn between them.
--
-- delivery_jobs: a small queue whose rows are rewritten several times and
-- then pruned (upkeep vacuums it past 5,000 dead rows too); visit it on a
-- dead-row count, whatever its size.
ALTER TABLE delivery_jobs SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.05);
-- events: append-only, but for retention's payload expiry. Insert-driven
-- vacuums every 5% keep the visibility map current (index-only scans by
-- commit order) and freeze in small steps instead of one wraparound pass;
-- retention's updates are vacuumed at 5% dead.
ALTER TABLE events SET (autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02);
-- The read models: each row written pending, then updated with its outcome.
ALTER TABLE delivery_attempts SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE events_view SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02);
-- consumer_offsets: a few rows updated many times a second.
ALTER TABLE consumer_offsets SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
