package ingest

import (
	"math"
	"sync"
	"time"
)

// limiter holds the ingest token buckets, by key ("source:ID", "env:ID"):
// each refills at its limit per second and holds at most one second of it,
// so a sender may burst up to the limit and then keeps to it. The buckets
// are this process's: N processes behind a balancer admit up to N times the
// limit between them.
type limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// limit is one bucket to take from: its key and rate (webhooks/s, > 0).
type limit struct {
	key  string
	rate int
}

// take takes one token from every bucket of limits, or none: then it
// returns how long until each would have one.
func (l *limiter) take(now time.Time, limits ...limit) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = map[string]*bucket{}
	}
	if now.Sub(l.swept) > time.Minute {
		l.sweep(now)
	}
	var wait time.Duration
	bs := make([]*bucket, len(limits))
	for i, lim := range limits {
		b := l.buckets[lim.key]
		if b == nil {
			b = &bucket{tokens: float64(lim.rate), last: now}
			l.buckets[lim.key] = b
		}
		b.tokens = math.Min(float64(lim.rate), b.tokens+now.Sub(b.last).Seconds()*float64(lim.rate))
		b.last = now
		if b.tokens < 1 {
			wait = max(wait, time.Duration((1-b.tokens)/float64(lim.rate)*float64(time.Second)))
		}
		bs[i] = b
	}
	if wait > 0 {
		return false, wait
	}
	for _, b := range bs {
		b.tokens--
	}
	return true, 0
}

// sweep forgets the buckets idle for a minute (they would be full again).
func (l *limiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.last) > time.Minute {
			delete(l.buckets, k)
		}
	}
	l.swept = now
}
