-- What recording an attempt needs of a delivery beside its job row, written
-- by the writers that hold the folded aggregate (ingest, the delivery
-- handler, manual retry, replay release), so that the delivery handler need
-- not load and decode the stream. NULL means unknown (a row the scheduler
-- projection or a rebuild wrote): the stream is loaded. The row's version
-- guards it: the append is made at that expected version.
SET LOCAL lock_timeout = '10s';
ALTER TABLE delivery_jobs ADD COLUMN auto_retries integer, ADD COLUMN last_number integer, ADD COLUMN reopened text;
