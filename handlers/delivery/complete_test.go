package delivery

import (
	"testing"
	"time"

	"github.com/hookstream/hookstream/domain"
)

// A failed attempt whose retry is due at once chains: the plan keeps the
// job's lease and hands back the next attempt, folded; a retry that waits,
// a success and a plan without holdUntil chain nothing.
func TestPlanCompletionChainsOnlyRetriesDueAtOnce(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	job := func(id string, intervals ...int) dispatchJob {
		return dispatchJob{DeliveryID: id, OrgID: "org", EnvID: "env", EventID: "ev-" + id, DestinationID: "dst", DestFound: true,
			ClaimedAt: now.Add(-time.Second), DestUpdatedAt: now.Add(-time.Hour),
			AttemptID: "att-" + id + "-1", AttemptNumber: 1, Version: 1, BodyB64: "e30=",
			Retry: domain.RetryPolicy{Enabled: true, MaxRetries: 3, Backoff: domain.BackoffFixed, Intervals: intervals},
			State: &domain.DeliveryState{Version: 1, EventID: "ev-" + id, LastNumber: 1, Next: domain.PlannedAttempt{ID: "att-" + id + "-1", Number: 1,
				Trigger: domain.TriggerInitial, Due: now.Add(-time.Second)}}}
	}
	result := func(j dispatchJob, status string) domain.DeliveryAttempted {
		code := 200
		if status != domain.AttemptSuccess {
			code = 500
		}
		return domain.DeliveryAttempted{AttemptID: j.AttemptID, Status: status, ResponseStatus: &code, StartedAt: now}
	}
	batch := []dispatchJob{job("now", 0), job("later", 30), job("ok", 0)}
	results := []domain.DeliveryAttempted{result(batch[0], domain.AttemptFailed), result(batch[1], domain.AttemptFailed),
		result(batch[2], domain.AttemptSuccess)}
	until := now.Add(10 * time.Second)

	plan, err := planCompletion(append([]dispatchJob(nil), batch...), results, nil, now, &until)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.appends) != 3 || plan.deadLetter || len(plan.stale) != 0 {
		t.Fatalf("plan = %d appends, dead letter %v, stale %v", len(plan.appends), plan.deadLetter, plan.stale)
	}
	if len(plan.next) != 1 {
		t.Fatalf("chained %d attempts, want 1 (the retry due at once)", len(plan.next))
	}
	n := plan.next[0]
	if n.DeliveryID != "now" || n.AttemptNumber != 2 || n.AttemptID == batch[0].AttemptID || n.AttemptID == "" {
		t.Errorf("chained job = delivery %q attempt %d id %q", n.DeliveryID, n.AttemptNumber, n.AttemptID)
	}
	if n.Version != 3 || n.State == nil || n.State.Version != 3 || n.State.Next.ID != n.AttemptID ||
		n.State.Next.Trigger != domain.TriggerRetry || n.State.AutoRetries != 0 {
		t.Errorf("chained job's version %d and state %+v: want version 3 (requested, attempted, retry scheduled) and the retry planned", n.Version, n.State)
	}
	if n.BodyB64 != batch[0].BodyB64 || n.DestinationID != "dst" || n.EventID != "ev-now" {
		t.Errorf("chained job lost its request: %+v", n)
	}
	args := plan.rows.Args("worker-1")
	leases := args[10].([]*time.Time)
	if len(leases) != 3 || leases[0] == nil || !leases[0].Equal(until) || leases[1] != nil || leases[2] != nil {
		t.Errorf("leases kept = %v, want only the chained delivery's, until %s", leases, until)
	}
	if args[11] != "worker-1" {
		t.Errorf("lease holder = %v", args[11])
	}
	if dest := args[12].([]*time.Time); dest[0] == nil || !dest[0].Equal(batch[0].DestUpdatedAt) || dest[1] != nil {
		t.Errorf("destination versions = %v, want the claim's for the chained delivery only", dest)
	}
	// The chained attempt, recorded in turn, plans the third attempt.
	plan2, err := planCompletion([]dispatchJob{n}, []domain.DeliveryAttempted{result(n, domain.AttemptFailed)}, nil, now, &until)
	if err != nil || len(plan2.next) != 1 || plan2.next[0].AttemptNumber != 3 || plan2.next[0].State.AutoRetries != 1 {
		t.Fatalf("second link: err %v, next %+v", err, plan2.next)
	}

	plan, err = planCompletion(append([]dispatchJob(nil), batch...), results, nil, now, nil)
	if err != nil || len(plan.next) != 0 {
		t.Fatalf("without holdUntil: err %v, chained %d", err, len(plan.next))
	}
	old := append([]dispatchJob(nil), batch...)
	old[0].ClaimedAt = now.Add(-chainWindow - time.Second)
	if plan, err := planCompletion(old, results, nil, now, &until); err != nil || len(plan.next) != 0 {
		t.Fatalf("a job claimed %s ago chained %d attempts (err %v): past chainWindow the retry is claimed again", now.Sub(old[0].ClaimedAt), len(plan.next), err)
	}
	for i, l := range plan.rows.Args("worker-1")[10].([]*time.Time) {
		if l != nil {
			t.Errorf("row %d keeps a lease without holdUntil", i)
		}
	}
}
