package domain

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func apply(t *testing.T, r *Replay, v int64, typ string, payload any) {
	t.Helper()
	raw, _ := json.Marshal(payload)
	if err := r.Apply(v, typ, raw); err != nil {
		t.Fatal(err)
	}
}

func TestReplayReleasesOneBatchPerSecond(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r := &Replay{}
	if _, ids := r.NextBatch(t0); ids != nil {
		t.Fatal("an empty stream released a batch")
	}
	apply(t, r, 1, EvReplayRequested, ReplayRequested{ReplayID: "r", RateLimit: 2, EventIDs: []string{"a", "b", "c", "d", "e"}})
	off, ids := r.NextBatch(t0)
	if off != 0 || len(ids) != 2 || ids[0] != "a" {
		t.Fatalf("first batch = %d %v", off, ids)
	}
	d, err := r.Release(off, len(ids), []string{"d1", "d2"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, r, 2, d.Type, d.Payload)
	if _, ids := r.NextBatch(t0.Add(999 * time.Millisecond)); ids != nil {
		t.Fatalf("a second batch within the second: %v", ids)
	}
	if _, err := r.Release(0, 2, nil, t0); err == nil {
		t.Fatal("released the first batch twice")
	}
	// After a long outage, still one batch at a time.
	off, ids = r.NextBatch(t0.Add(time.Hour))
	if off != 2 || len(ids) != 2 || ids[0] != "c" {
		t.Fatalf("second batch = %d %v", off, ids)
	}
	d, _ = r.Release(off, len(ids), []string{"d3", "d4"}, t0.Add(time.Hour))
	apply(t, r, 3, d.Type, d.Payload)
	off, ids = r.NextBatch(t0.Add(time.Hour + time.Second))
	if off != 4 || len(ids) != 1 || ids[0] != "e" {
		t.Fatalf("last batch = %d %v", off, ids)
	}
	apply(t, r, 4, EvReplayFailed, ReplayFailed{Reason: "the destination was deleted"})
	if _, ids := r.NextBatch(t0.Add(2 * time.Hour)); ids != nil || r.Failed() == "" {
		t.Fatalf("a failed replay released %v", ids)
	}
}

func TestReplayFailuresAreFinalAndNotRetryableFailures(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := &Delivery{}
	raw, _ := json.Marshal(DeliveryRequested{DeliveryID: "d", EventID: "e", AttemptID: "a1", TriggerType: TriggerReplay, RequestedAt: t0})
	if err := d.Apply(1, EvDeliveryRequested, raw); err != nil {
		t.Fatal(err)
	}
	decided, err := d.RecordAttempt(DeliveryAttempted{AttemptID: "a1", Status: AttemptFailed}, DefaultRetryPolicy(), t0, func() string { return "a2" })
	if err != nil || len(decided) != 1 || decided[0].Type != EvDeliveryAttempted {
		t.Fatalf("replay failure decided %v, %v; want only DeliveryAttempted", decided, err)
	}
	raw, _ = json.Marshal(decided[0].Payload)
	if err := d.Apply(2, EvDeliveryAttempted, raw); err != nil {
		t.Fatal(err)
	}
	if d.Terminal() != AttemptFailed || d.Next() != nil {
		t.Errorf("after a failed replay: terminal %q, next %v", d.Terminal(), d.Next())
	}
	if _, ok := d.RetryableFailure(); ok {
		t.Error("an event-level retry would retry a replay delivery")
	}
}

func TestRetryableFailure(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := &Delivery{}
	raw, _ := json.Marshal(DeliveryRequested{DeliveryID: "d", EventID: "e", AttemptID: "a1", TriggerType: TriggerInitial, RequestedAt: t0})
	_ = d.Apply(1, EvDeliveryRequested, raw)
	if _, ok := d.RetryableFailure(); ok {
		t.Error("a delivery that has not run is not a failure")
	}
	policy := RetryPolicy{Enabled: true, MaxRetries: 1, Backoff: BackoffFixed, Intervals: []int{30}}
	ids := []string{"a2"}
	v := int64(1)
	record := func(id string) {
		decided, err := d.RecordAttempt(DeliveryAttempted{AttemptID: id, Status: AttemptFailed}, policy, t0, func() string { s := ids[0]; ids = ids[1:]; return s })
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range decided {
			v++
			raw, _ := json.Marshal(e.Payload)
			if err := d.Apply(v, e.Type, raw); err != nil {
				t.Fatal(err)
			}
		}
	}
	record("a1") // retry scheduled
	if id, ok := d.RetryableFailure(); !ok || id != "a1" {
		t.Errorf("waiting in backoff: %q %v", id, ok)
	}
	record("a2") // exhausted: DLQ
	if id, ok := d.RetryableFailure(); !ok || id != "a2" || d.Terminal() != "dlq" {
		t.Errorf("dead-lettered: %q %v %q", id, ok, d.Terminal())
	}
}

func TestReplayCancelStopsReleasingAndIsRefusedWhenNothingIsLeft(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if _, err := (&Replay{}).Cancel(t0); ErrorCode(err) != ENotFound {
		t.Fatalf("cancel of an empty stream = %v", err)
	}
	r := &Replay{}
	apply(t, r, 1, EvReplayRequested, ReplayRequested{ReplayID: "r", RateLimit: 2, EventIDs: []string{"a", "b", "c"}})
	off, ids := r.NextBatch(t0)
	d, _ := r.Release(off, len(ids), []string{"d1", "d2"}, t0)
	apply(t, r, 2, d.Type, d.Payload)
	c, err := r.Cancel(t0)
	if err != nil || c.Type != EvReplayCancelled {
		t.Fatalf("cancel = %v %v", c, err)
	}
	apply(t, r, 3, c.Type, c.Payload)
	if _, ids := r.NextBatch(t0.Add(time.Hour)); ids != nil || !r.Cancelled() {
		t.Fatalf("a cancelled replay released %v", ids)
	}
	if _, err := r.Cancel(t0); ErrorCode(err) != EConflict {
		t.Fatalf("second cancel = %v", err)
	}
	failed := &Replay{}
	apply(t, failed, 1, EvReplayRequested, ReplayRequested{ReplayID: "r", RateLimit: 2, EventIDs: []string{"a"}})
	apply(t, failed, 2, EvReplayFailed, ReplayFailed{Reason: "the destination was deleted"})
	if _, err := failed.Cancel(t0); ErrorCode(err) != EConflict || !strings.Contains(err.Error(), "deleted") {
		t.Fatalf("cancel of a failed replay = %v", err)
	}
	done := &Replay{}
	apply(t, done, 1, EvReplayRequested, ReplayRequested{ReplayID: "r", RateLimit: 2, EventIDs: []string{"a"}})
	d, _ = done.Release(0, 1, []string{"d1"}, t0)
	apply(t, done, 2, d.Type, d.Payload)
	if _, err := done.Cancel(t0); ErrorCode(err) != EConflict {
		t.Fatalf("cancel after the last batch = %v", err)
	}
}
