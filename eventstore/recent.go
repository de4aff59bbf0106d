package eventstore

import (
	"bytes"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// The payloads this process appended, as the Go values it encoded, for the
// projector in the same process. The projector folds every event it reads
// from the log, and almost all of them were appended moments before by
// this process's ingest and delivery handler: decoding the JSON that was
// encoded here was the largest part of its work (encoding/json's decoder,
// 10% of the engine's CPU saturated at fail-first 1). An appender that
// sets NewEvent.Projected leaves that value here; the projector takes it
// (ReadFolded) and folds it instead of the stored JSON, which it then does
// not read at all.
//
// The log stays the source of truth, and a value is handed out only while
// it is certainly what the log holds. An event not found here is read and
// decoded as before: another process appended it, the batch is read a
// second time (each value is handed out once), the process restarted, or
// the value was not kept or was dropped:
//   - its JSON is not exactly the value: encoding/json writes invalid UTF-8
//     as \ufffd, so a payload with that escape (or a backslash before
//     "ufffd", which only costs the decoding) is not kept;
//   - it is older than recentMaxAge: retention may have expired the stored
//     payload since (payloads are kept at least 60 s; a projector further
//     behind than that reads the log);
//   - the same event id was prepared twice (an append retried after a commit
//     whose outcome the writer did not see, with a payload decided again):
//     which one committed is the log's to say;
//   - its append failed (AppendMany, QueueAppend's read);
//   - keeping it would pass recentCap values or recentMaxBytes of payload
//     JSON: the oldest go first.
//
// Only a process that runs a projector keeps them (KeepRecent): an API-only
// process would fill the cache for nobody.
const (
	recentCap      = 1 << 14
	recentMaxBytes = 32 << 20
	recentMaxAge   = 30 * time.Second
	// a payload larger than this is not kept (large ones are few; the
	// bound leaves room for many small ones)
	recentMaxValue = 256 << 10
)

type recentEntry struct {
	v    any
	size int
	at   time.Time
}

type recentPayloads struct {
	on       atomic.Bool
	attached atomic.Uint64
	now      func() time.Time
	maxBytes int
	mu       sync.Mutex
	m        map[uuid.UUID]recentEntry
	bytes    int         // of the entries in m
	ring     []uuid.UUID // the ids in the order they were kept; oldest at head
	head, n  int
}

var recent = newRecent(recentCap, recentMaxBytes, time.Now)

func newRecent(n, maxBytes int, now func() time.Time) *recentPayloads {
	return &recentPayloads{m: make(map[uuid.UUID]recentEntry, n), ring: make([]uuid.UUID, n), maxBytes: maxBytes, now: now}
}

var replaced = []byte(`\ufffd`)

// put keeps v as the payload of event id, whose JSON is payload.
func (r *recentPayloads) put(id uuid.UUID, v any, payload []byte) {
	if v == nil || !r.on.Load() || len(payload) > recentMaxValue || len(payload) > r.maxBytes ||
		reflect.TypeOf(v).Kind() == reflect.Pointer || bytes.Contains(payload, replaced) {
		return // a pointer's target could change after the append; the projections expect values
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, again := r.m[id]; again {
		r.drop(id) // prepared twice: the log says which
		return
	}
	for r.n > 0 && (r.n == len(r.ring) || r.bytes+len(payload) > r.maxBytes || now.Sub(r.m[r.ring[r.head]].at) > recentMaxAge) {
		r.drop(r.ring[r.head]) // a no-op for one already taken
		r.head = (r.head + 1) % len(r.ring)
		r.n--
	}
	r.ring[(r.head+r.n)%len(r.ring)] = id
	r.n++
	r.m[id] = recentEntry{v: v, size: len(payload), at: now}
	r.bytes += len(payload)
}

// drop forgets id's value (r.mu held).
func (r *recentPayloads) drop(id uuid.UUID) {
	if e, ok := r.m[id]; ok {
		r.bytes -= e.size
		delete(r.m, id)
	}
}

// forget drops the values of events whose append failed.
func (r *recentPayloads) forget(evs []Event) {
	if !r.on.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range evs {
		r.drop(e.EventID)
	}
}

// attach moves the kept payloads of evs into their Decoded, and forgets
// them: each is handed out once (a batch read again is read from the log).
func (r *recentPayloads) attach(evs []Event) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.m) == 0 {
		return
	}
	for i := range evs {
		e, ok := r.m[evs[i].EventID]
		if !ok {
			continue
		}
		r.drop(evs[i].EventID)
		if now.Sub(e.at) <= recentMaxAge {
			evs[i].Decoded = e.v
			r.attached.Add(1)
		}
	}
}

// KeepRecent makes this process keep the Projected values of what it
// appends from now on, for ReadFolded; a projector turns it on.
func KeepRecent() { recent.on.Store(true) }

// RecentAttached is how many payloads ReadFolded has handed out as values
// since the process started.
func RecentAttached() uint64 { return recent.attached.Load() }
