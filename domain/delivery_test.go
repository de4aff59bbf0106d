package domain

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// A delivery restored from its State decides what the folded stream decides,
// at every point a job can be claimed: the first attempt, a retry in
// backoff, a manual retry of a dead letter (reopened), the last retry.
func TestRestoredDeliveryDecidesAsTheFoldedOne(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	policy := RetryPolicy{Enabled: true, MaxRetries: 2, Backoff: BackoffFixed, Intervals: []int{30}}
	d := &Delivery{}
	// typed follows the same events without encoding them (ApplyDecided, as
	// the delivery handler folds what it decided): it must stay equal to d.
	typed := &Delivery{}
	v := int64(0)
	apply := func(typ string, payload any) {
		t.Helper()
		raw, err := json.Marshal(payload)
		if err != nil {
			t.Fatal(err)
		}
		v++
		if err := d.Apply(v, typ, raw); err != nil {
			t.Fatal(err)
		}
		if err := typed.ApplyDecided(v, Decided{Type: typ, Payload: payload}); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(d, typed) {
			t.Fatalf("after %s: decoded %+v, typed %+v", typ, d, typed)
		}
	}
	n := 0
	newID := func() string { n++; return "gen" + string(rune('a'+n)) }
	// check compares both deciding on the same result, then applies it.
	check := func(res DeliveryAttempted) {
		t.Helper()
		st, ok := d.State()
		if !ok {
			t.Fatal("no attempt planned")
		}
		restored := RestoreDelivery(st)
		save := n
		want, werr := d.RecordAttempt(res, policy, t0, newID)
		n = save
		got, gerr := restored.RecordAttempt(res, policy, t0, newID)
		if !reflect.DeepEqual(want, got) || (werr == nil) != (gerr == nil) {
			t.Fatalf("at version %d: folded %+v %v, restored %+v %v", v, want, werr, got, gerr)
		}
		if restored.Version() != d.Version() {
			t.Fatalf("version %d, want %d", restored.Version(), d.Version())
		}
		for _, e := range want {
			apply(e.Type, e.Payload)
		}
	}
	apply(EvDeliveryRequested, DeliveryRequested{DeliveryID: "d", EventID: "e", AttemptID: "a1", TriggerType: TriggerInitial, RequestedAt: t0})
	check(DeliveryAttempted{AttemptID: "a1", Status: AttemptFailed}) // retry 1 scheduled
	check(DeliveryAttempted{AttemptID: d.Next().ID, Status: AttemptFailed})
	check(DeliveryAttempted{AttemptID: d.Next().ID, Status: AttemptFailed}) // exhausted: DLQ
	if d.Terminal() != "dlq" {
		t.Fatalf("terminal = %q", d.Terminal())
	}
	if _, ok := d.State(); ok {
		t.Fatal("a dead letter has no attempt to record")
	}
	apply(EvRetryRequested, RetryRequested{AttemptID: "m1", AttemptNumber: 4, FromAttemptID: "x", RequestedAt: t0})
	check(DeliveryAttempted{AttemptID: "m1", Status: AttemptFailed}) // reopened: back to the DLQ
	apply(EvRetryRequested, RetryRequested{AttemptID: "m2", AttemptNumber: 5, RequestedAt: t0})
	check(DeliveryAttempted{AttemptID: "m2", Status: AttemptSuccess})
	if d.Terminal() != AttemptSuccess {
		t.Fatalf("terminal = %q", d.Terminal())
	}
}

// A decided event whose payload is not its type's is an error, not a
// silently wrong fold.
func TestApplyDecidedRefusesAMismatchedPayload(t *testing.T) {
	d := &Delivery{}
	if err := d.ApplyDecided(1, Decided{Type: EvRetryScheduled, Payload: DeliveryAttempted{}}); err == nil {
		t.Fatal("a RetryScheduled with a DeliveryAttempted payload was applied")
	}
}
