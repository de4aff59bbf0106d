-- A replay lists its events when it is requested; a history pass (0021)
-- may remove one of them before its batch is released, and the release
-- then leaves it out. skipped counts those, so a replay whose every other
-- event was processed completes instead of showing running until its row
-- is pruned. Rebuilt from ReplayReleased (count less its delivery ids).
ALTER TABLE replay_jobs ADD COLUMN skipped int NOT NULL DEFAULT 0 CHECK (skipped >= 0);
