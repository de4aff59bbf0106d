-- hookstream:no-transaction
-- event_delivery_outcomes is written by delivery (one row each, upserted)
-- and read by event (the event's status, the history pass's deletes, the
-- rebuild). It had two indexes for that, delivery_id (the primary key) and
-- event_id; a delivery belongs to one event, so one primary key on
-- (event_id, delivery_id) serves the reads and the upserts' conflicts, and
-- each new outcome pays one index entry instead of two.
-- Built CONCURRENTLY, then made the primary key (a brief exclusive lock: the
-- columns are already NOT NULL, nothing is scanned). Each statement is safe
-- to run again: a build cut short leaves an invalid index, dropped first;
-- the swap only happens while the key is still the old one; and a run cut
-- short after the swap builds the new index again under its first name,
-- which the last statement drops.
-- Engines older than this migration upsert ON CONFLICT (delivery_id), which
-- no index serves afterwards: stop them before it runs.
DROP INDEX CONCURRENTLY IF EXISTS event_delivery_outcomes_key;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS event_delivery_outcomes_key ON event_delivery_outcomes (event_id, delivery_id);
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'event_delivery_outcomes'::regclass AND contype = 'p'
                 AND pg_get_indexdef(conindid) LIKE '%(event_id, delivery_id)') THEN
    ALTER TABLE event_delivery_outcomes DROP CONSTRAINT event_delivery_outcomes_pkey,
      ADD CONSTRAINT event_delivery_outcomes_pkey PRIMARY KEY USING INDEX event_delivery_outcomes_key; END IF; END $$;
DROP INDEX CONCURRENTLY IF EXISTS event_delivery_outcomes_event_idx;
DROP INDEX CONCURRENTLY IF EXISTS event_delivery_outcomes_key;
