package delivery

import (
	"context"
	"errors"
	"time"
)

// Grouped records: at low load every lane's batch is one webhook, and
// recording it alone is a transaction, a commit and a round trip per
// webhook. A lane that records a small batch waits up to groupWindow for
// other lanes' records and writes them all in one pipeline, as River's
// completer batches its completions; a group of groupJobs jobs or more goes
// at once, so under load, when batches are large, nothing waits. The wait
// holds the lane, not the destination's room: a batch gives its room back
// before it waits (laneRun.sent; one whose retries chain takes it again
// after, retake), and a group goes once it holds a quarter of a tenant's
// lanes (groupDue).
//
// The wait delays the record, not the delivery: the request has been
// answered, and what waits is the attempt's event, its job row and, after
// them, the read models, and a retry due at once (it goes out once its
// failure is recorded). A manual retry (its API call answers with the
// outcome) and a full batch whose retries chain record at once
// (completeTx); a test send waits like any first attempt. At 150 webhooks/s, 2,000
// webhooks (make profile), a window of 8 ms made 0.51 record transactions
// per webhook, 100 ms 0.06; the statements per webhook fell from 6.8 to
// 4.2 (River's completer, in the same setting, wrote 54 completions for
// 2,000 jobs).
const (
	groupWindow = 100 * time.Millisecond
	groupJobs   = 16
)

// pendingRecord is one batch's planned record, waiting in a group.
type pendingRecord struct {
	dest   string
	failed bool
	plan   completionPlan
	jobs   int
	done   chan recordDone
}

type recordDone struct {
	kept map[string]bool
	err  error
}

// errRecordAlone tells a batch its group failed: it records alone (the
// failure may have been another batch's: a circuit to count, a stream
// that moved).
var errRecordAlone = errors.New("the group's record failed: record alone")

// recordGrouped records p with whatever other lanes are recording: the
// first batch of a group leads it, waits for the others (up to
// groupWindow, or until the group holds groupJobs jobs, or not at all while
// the engine drains) and writes the group; the others wait for its result.
func (e *Engine) recordGrouped(ctx context.Context, p *pendingRecord) (map[string]bool, error) {
	p.done = make(chan recordDone, 1)
	e.groupMu.Lock()
	e.group = append(e.group, p)
	e.groupJobs += p.jobs
	lead := len(e.group) == 1
	if !lead && e.groupDue() {
		select {
		case e.groupFull <- struct{}{}:
		default:
		}
	}
	e.groupMu.Unlock()
	if !lead {
		r := <-p.done
		return r.kept, r.err
	}
	timer := time.NewTimer(groupWindow)
	defer timer.Stop()
	var group []*pendingRecord
	for waited := false; ; {
		e.groupMu.Lock()
		if waited || e.groupDue() || e.draining.Load() {
			group, e.group, e.groupJobs = e.group, nil, 0
			e.groupMu.Unlock()
			break
		}
		e.groupMu.Unlock()
		select {
		case <-timer.C:
			waited = true
		case <-e.groupFull: // possibly a stale signal: the count is checked again
		}
	}
	// The others hear of the result whatever happens (a panic included: they
	// then record alone).
	result := recordDone{err: errRecordAlone}
	defer func() {
		for _, q := range group[1:] {
			q.done <- result
		}
	}()
	kept, err := e.record(ctx, group)
	if err == nil {
		e.p.Metrics.RecordGroup(len(group))
	}
	if err != nil && len(group) > 1 {
		err = errRecordAlone
	}
	result = recordDone{kept: kept, err: err}
	return kept, err
}

// groupDue reports whether the forming group goes at once: it holds
// groupJobs jobs, or a quarter of the lanes a tenant may hold (each
// waiting batch holds a lane: with few lanes, a full window's wait would
// leave none for new requests). Under groupMu.
func (e *Engine) groupDue() bool {
	return e.groupJobs >= groupJobs || len(e.group) >= max(1, min(e.p.Lanes, e.p.PerTenantLanes)/4)
}
