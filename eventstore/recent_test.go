package eventstore

import (
	"encoding/json"
	"testing"

	"github.com/google/uuid"
)

func TestRecentHandsEachKeptPayloadOutOnce(t *testing.T) {
	t.Parallel()
	r := newRecent(2)
	a, b := uuid.New(), uuid.New()
	r.put(a, "a", []byte(`"a"`)) // not on: nothing kept
	evs := []Event{{EventID: a}}
	r.attach(evs)
	if evs[0].Decoded != nil {
		t.Fatalf("kept while off: %v", evs[0].Decoded)
	}
	r.on.Store(true)
	r.put(a, "a", []byte(`"a"`))
	r.put(b, nil, []byte(`{}`)) // no value: nothing to keep
	evs = []Event{{EventID: b}, {EventID: a}}
	r.attach(evs)
	if evs[0].Decoded != nil || evs[1].Decoded != "a" {
		t.Fatalf("attached %v, %v", evs[0].Decoded, evs[1].Decoded)
	}
	evs = []Event{{EventID: a}}
	r.attach(evs)
	if evs[0].Decoded != nil {
		t.Fatal("a payload handed out twice")
	}
	if r.attached.Load() != 1 {
		t.Fatalf("attached count %d", r.attached.Load())
	}
}

func TestRecentForgetsTheOldestPastItsCapacity(t *testing.T) {
	t.Parallel()
	r := newRecent(2)
	r.on.Store(true)
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, id := range ids {
		r.put(id, i, []byte(`0`))
	}
	evs := []Event{{EventID: ids[0]}, {EventID: ids[1]}, {EventID: ids[2]}}
	r.attach(evs)
	if evs[0].Decoded != nil || evs[1].Decoded != 1 || evs[2].Decoded != 2 {
		t.Fatalf("attached %v %v %v", evs[0].Decoded, evs[1].Decoded, evs[2].Decoded)
	}
	if len(r.m) != 0 {
		t.Fatalf("%d values left", len(r.m))
	}
}

// A string that is not UTF-8 is stored as U+FFFD, so its value is not what
// the log holds: the reader decodes the log.
func TestRecentKeepsNoValueTheJSONDoesNotHold(t *testing.T) {
	t.Parallel()
	r := newRecent(4)
	r.on.Store(true)
	v := struct{ Body string }{"cut \xe2\x82"}
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	r.put(id, v, raw)
	evs := []Event{{EventID: id}}
	r.attach(evs)
	if evs[0].Decoded != nil {
		t.Fatalf("kept %s's value", raw)
	}
}
