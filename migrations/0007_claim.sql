-- The claim walks the destinations that have scheduled jobs, then each one's
-- due jobs up to its free capacity: a saturated or held destination costs
-- one probe, not a walk through its backlog, and the only leased rows a claim
-- steps over are the jobs in flight (bounded per destination). It replaces
-- the due_at index, which every claim walked from its oldest row.
SET LOCAL lock_timeout = '10s';
CREATE INDEX delivery_jobs_claim_idx ON delivery_jobs (destination_id, due_at) WHERE state = 'scheduled';
DROP INDEX delivery_jobs_due_idx;
-- Room in every page for the rewrite of a row in place (a HOT update, no
-- index entries): a claim changes only the lease, and a recorded attempt
-- only its result columns.
ALTER TABLE delivery_jobs SET (fillfactor = 70);
ALTER TABLE delivery_attempts SET (fillfactor = 70);
