-- Payloads a retention pass had to keep past their cutoff (their delivery
-- was still scheduled, e.g. a destination paused for days): the next passes
-- re-check these positions instead of re-reading the log from the oldest,
-- so a pass reads only the log written since the last one.
CREATE TABLE retention_held (
    org_id text   NOT NULL,
    env_id text   NOT NULL,
    pos    bigint NOT NULL,
    PRIMARY KEY (org_id, env_id, pos)
);

-- Room in each page of the log for retention's rewrites: an expired
-- payload replaces its row by a smaller one, and with free space on the
-- page the update is HOT (no index entry, the old version pruned in place)
-- instead of a new row in every index of the table. Applies to pages
-- written from now on.
ALTER TABLE events SET (fillfactor = 85);
