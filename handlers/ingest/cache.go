package ingest

import (
	"sync"
	"time"
)

// ingestCache keeps looked-up sources and their routes for a moment, so a
// burst of webhooks to one source costs one lookup, not one per request. A
// configuration write in this process clears it at once; a write made by
// another process is seen within the TTL.
type ingestCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[string]cachedTarget
	// gen counts clears: a lookup that began before a clear does not cache
	// what it read (the rows a configuration write was replacing).
	gen uint64
}

type cachedTarget struct {
	target *IngestTarget
	until  time.Time
}

// maxIngestCache bounds the cache: past it, it starts over.
const maxIngestCache = 10000

func newIngestCache(ttl time.Duration, now func() time.Time) *ingestCache {
	return &ingestCache{ttl: ttl, now: now, entries: map[string]cachedTarget{}}
}

// get returns a fresh entry (nil when none) and the generation a lookup
// made now must pass to put.
func (c *ingestCache) get(id string) (*IngestTarget, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttl <= 0 {
		return nil, c.gen
	}
	e, ok := c.entries[id]
	if !ok || !c.now().Before(e.until) {
		return nil, c.gen
	}
	return e.target, c.gen
}

// put keeps t for the TTL, unless the cache was cleared since gen.
func (c *ingestCache) put(id string, t *IngestTarget, gen uint64) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.entries) >= maxIngestCache {
		c.entries = map[string]cachedTarget{}
	}
	c.entries[id] = cachedTarget{target: t, until: c.now().Add(c.ttl)}
}

// clear forgets every entry (a source, destination or connection changed).
func (c *ingestCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = map[string]cachedTarget{}
	c.gen++
}
