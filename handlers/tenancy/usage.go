package tenancy

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// KeyUsage keeps API keys' last_used_at and request_count without a write
// per request: counts gather in memory and are written at most once a
// minute per key (the first use at once). Counts not yet written when the
// process stops are lost: request_count is approximate.
type KeyUsage struct {
	pool *pgxpool.Pool
	mu   sync.Mutex
	keys map[string]*usage
}

type usage struct {
	pending int64
	written time.Time
}

// usageFlushEvery is how often one key's usage is written.
const usageFlushEvery = time.Minute

func NewKeyUsage(pool *pgxpool.Pool) *KeyUsage {
	return &KeyUsage{pool: pool, keys: map[string]*usage{}}
}

// record counts one request of key, writing the count when due.
func (u *KeyUsage) Record(ctx context.Context, key string, now time.Time) error {
	u.mu.Lock()
	k := u.keys[key]
	if k == nil {
		if len(u.keys) > 100000 { // bounded: a key set that large is reset, not grown
			u.keys = map[string]*usage{}
		}
		k = &usage{}
		u.keys[key] = k
	}
	k.pending++
	if now.Sub(k.written) < usageFlushEvery {
		u.mu.Unlock()
		return nil
	}
	n := k.pending
	k.pending, k.written = 0, now
	u.mu.Unlock()
	_, err := u.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = $2, request_count = request_count + $3 WHERE id = $1`, key, now, n)
	return err
}
