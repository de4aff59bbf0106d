-- Slugs are unique per environment for sources and destinations. The API
-- checks it under a transaction lock (resources.claimSlug) rather than a
-- unique index, so that an upgrade never fails on duplicates stored
-- before; this index makes the check one probe.
CREATE INDEX sources_slug_idx ON sources (org_id, env_id, slug);
CREATE INDEX destinations_slug_idx ON destinations (org_id, env_id, slug);

-- A replay can be cancelled (ReplayCancelled): status 'cancelled'.
ALTER TABLE replay_jobs ADD COLUMN cancelled_at timestamptz;
