-- The claim walks the destinations that have claimable jobs, then each
-- one's due jobs up to its free capacity: a leased job leaves this index,
-- so a claim never scans past jobs in flight, and a saturated or held
-- destination costs one probe, not a walk through its backlog.
SET LOCAL lock_timeout = '10s';
CREATE INDEX delivery_jobs_claim_idx ON delivery_jobs (destination_id, due_at) WHERE state = 'scheduled' AND lease_until IS NULL;
-- Expired leases, for the rescuer that hands them back.
CREATE INDEX delivery_jobs_lease_idx ON delivery_jobs (lease_until) WHERE state = 'scheduled' AND lease_until IS NOT NULL;
