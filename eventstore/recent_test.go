package eventstore

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
)

// clock is a settable time for the cache's age rule.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func testRecent(n, maxBytes int) (*recentPayloads, *clock) {
	c := &clock{t: time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)}
	r := newRecent(n, maxBytes, c.now)
	r.on.Store(true)
	return r, c
}

// decoded attaches r's values to events of ids and returns their Decoded.
func decoded(r *recentPayloads, ids ...uuid.UUID) []any {
	evs := make([]Event, len(ids))
	for i, id := range ids {
		evs[i].EventID = id
	}
	r.attach(evs)
	out := make([]any, len(ids))
	for i, e := range evs {
		out[i] = e.Decoded
	}
	return out
}

func TestRecentHandsEachKeptPayloadOutOnce(t *testing.T) {
	t.Parallel()
	r, _ := testRecent(4, 1<<20)
	a, b := uuid.New(), uuid.New()
	r.on.Store(false)
	r.put(a, "a", []byte(`"a"`)) // off: nothing kept
	if got := decoded(r, a); got[0] != nil {
		t.Fatalf("kept while off: %v", got[0])
	}
	r.on.Store(true)
	r.put(a, "a", []byte(`"a"`))
	r.put(b, nil, []byte(`{}`)) // no value: nothing to keep
	if got := decoded(r, b, a); got[0] != nil || got[1] != "a" {
		t.Fatalf("attached %v", got)
	}
	if got := decoded(r, a); got[0] != nil {
		t.Fatal("a payload handed out twice")
	}
	if r.attached.Load() != 1 || r.bytes != 0 || len(r.m) != 0 {
		t.Fatalf("attached %d, %d bytes and %d values left", r.attached.Load(), r.bytes, len(r.m))
	}
}

func TestRecentForgetsTheOldestPastItsBounds(t *testing.T) {
	t.Parallel()
	// By count.
	r, _ := testRecent(2, 1<<20)
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, id := range ids {
		r.put(id, i, []byte(`0`))
	}
	if got := decoded(r, ids...); got[0] != nil || got[1] != 1 || got[2] != 2 {
		t.Fatalf("by count: attached %v", got)
	}
	// By bytes: 4 + 4 fit in 10, a third 4 pushes the first out.
	r, _ = testRecent(8, 10)
	for i, id := range ids {
		r.put(id, i, []byte(`"ab"`))
	}
	if got := decoded(r, ids...); got[0] != nil || got[1] != 1 || got[2] != 2 || r.bytes != 0 {
		t.Fatalf("by bytes: attached %v, %d bytes left", got, r.bytes)
	}
	// By age: an old value is not handed out, and a put clears old ones.
	r, c := testRecent(8, 1<<20)
	r.put(ids[0], 0, []byte(`0`))
	r.put(ids[1], 1, []byte(`0`))
	c.t = c.t.Add(recentMaxAge + time.Second)
	if got := decoded(r, ids[0]); got[0] != nil {
		t.Fatalf("a value older than %v handed out", recentMaxAge)
	}
	r.put(ids[2], 2, []byte(`0`))
	if _, ok := r.m[ids[1]]; ok || r.n != 1 || r.bytes != 1 {
		t.Fatalf("old values kept: %d in the ring, %d bytes", r.n, r.bytes)
	}
}

// A string that is not UTF-8 is stored as U+FFFD, so its value is not what
// the log holds: the reader decodes the log. Nor are pointers kept, nor
// values past the size bound.
func TestRecentKeepsNoValueTheJSONDoesNotHold(t *testing.T) {
	t.Parallel()
	r, _ := testRecent(4, 1<<20)
	v := struct{ Body string }{"cut \xe2\x82"}
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	cut, ptr, big := uuid.New(), uuid.New(), uuid.New()
	r.put(cut, v, raw)
	r.put(ptr, &v, []byte(`{}`))
	r.put(big, "big", make([]byte, recentMaxValue+1))
	if got := decoded(r, cut, ptr, big); got[0] != nil || got[1] != nil || got[2] != nil {
		t.Fatalf("kept %v", got)
	}
}

// An id prepared twice (a retried append whose first commit the writer did
// not see) is kept by neither; an append that failed leaves nothing.
func TestRecentDropsAmbiguousAndFailedAppends(t *testing.T) {
	t.Parallel()
	r, _ := testRecent(4, 1<<20)
	twice, failed := uuid.New(), uuid.New()
	r.put(twice, "unique", []byte(`"unique"`))
	r.put(twice, "duplicate", []byte(`"duplicate"`))
	r.put(failed, "f", []byte(`"f"`))
	r.forget([]Event{{EventID: failed}})
	if got := decoded(r, twice, failed); got[0] != nil || got[1] != nil {
		t.Fatalf("attached %v", got)
	}
	if r.bytes != 0 {
		t.Fatalf("%d bytes left", r.bytes)
	}
}
