package eventstore

import (
	"bytes"
	"sync"
	"sync/atomic"

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
// The log stays the source of truth: an event not found here (another
// process appended it, the projector fell further behind than recentCap
// events, the batch is read a second time, the process restarted) is
// decoded from the log as before. A value is kept only when its JSON holds
// exactly what the value does: encoding/json writes invalid UTF-8 as
// \ufffd, so a payload with that escape in it (or a backslash before
// "ufffd", which only costs the decoding) is not kept.
//
// Only a process that runs a projector keeps them (KeepRecent): an API-only
// process would fill the cache for nobody.
const recentCap = 1 << 14

type recentPayloads struct {
	on       atomic.Bool
	attached atomic.Uint64
	mu       sync.Mutex
	m        map[uuid.UUID]any
	ring     []uuid.UUID // insertion order; the oldest is overwritten
	next     int
}

var recent = newRecent(recentCap)

func newRecent(n int) *recentPayloads {
	return &recentPayloads{m: make(map[uuid.UUID]any, n), ring: make([]uuid.UUID, n)}
}

var replaced = []byte(`\ufffd`)

// put keeps v as the payload of event id, whose JSON is payload.
func (r *recentPayloads) put(id uuid.UUID, v any, payload []byte) {
	if v == nil || !r.on.Load() || bytes.Contains(payload, replaced) {
		return
	}
	r.mu.Lock()
	if old := r.ring[r.next]; old != uuid.Nil {
		delete(r.m, old) // a no-op when it was taken
	}
	r.ring[r.next] = id
	r.next = (r.next + 1) % len(r.ring)
	r.m[id] = v
	r.mu.Unlock()
}

// attach moves the kept payloads of evs into their Decoded, and forgets
// them: each is handed out once (a batch read again is read from the log).
func (r *recentPayloads) attach(evs []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.m) == 0 {
		return
	}
	for i := range evs {
		if v, ok := r.m[evs[i].EventID]; ok {
			evs[i].Decoded = v
			delete(r.m, evs[i].EventID)
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
