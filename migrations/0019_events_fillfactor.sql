-- More room than 0018 gave: a soak at 500 webhooks/s (1 KB bodies) with a
-- 5-minute retention found a quarter of retention's rewrites HOT at
-- fillfactor 85; a page holds several payloads that expire together, and
-- each expired version needs its own room. 70 leaves about 2.4 KB a page.
ALTER TABLE events SET (fillfactor = 70);
