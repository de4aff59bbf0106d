package domain

import (
	"encoding/json"
	"fmt"
	"time"
)

// Replay limits, as hookstream documents them.
const (
	ReplayDefaultRate      = 10
	ReplayMaxRate          = 100
	ReplayDefaultMaxEvents = 1000
	ReplayMaxEvents        = 10000
)

// Replay bounds of this engine, so that one request's cost is bounded.
const (
	// ReplayMaxSpan is the longest from-to range a replay may cover.
	ReplayMaxSpan = 90 * 24 * time.Hour
	// ReplayMaxRunning is how many replays one environment may run at once.
	ReplayMaxRunning = 10
	// ReplayMaxScanned is how many events of the range a filtered replay
	// checks against its filter before it gives up.
	ReplayMaxScanned = 100000
)

// ReplayRequested opens a replay stream: re-deliver EventIDs (chronological,
// fixed when the replay was asked for) to one destination, RateLimit per second.
type ReplayRequested struct {
	ReplayID      string    `json:"replay_id"`
	DestinationID string    `json:"destination_id"`
	SourceID      string    `json:"source_id,omitempty"`
	ConnectionID  string    `json:"connection_id,omitempty"`
	From          time.Time `json:"from"`
	To            time.Time `json:"to"`
	RateLimit     int       `json:"rate_limit"`
	MaxEvents     int       `json:"max_events"`
	EventIDs      []string  `json:"event_ids"`
	RequestedAt   time.Time `json:"requested_at"`
}

// ReplayReleased records that EventIDs[Offset:Offset+Count] were handed to the
// delivery pipeline (one DeliveryRequested each, in the same transaction).
type ReplayReleased struct {
	Offset      int       `json:"offset"`
	Count       int       `json:"count"`
	DeliveryIDs []string  `json:"delivery_ids"`
	ReleasedAt  time.Time `json:"released_at"`
}

// ReplayFailed ends a replay early: nothing more is released.
type ReplayFailed struct {
	Reason   string    `json:"reason"`
	FailedAt time.Time `json:"failed_at"`
}

// ReplayCancelled ends a replay on request: nothing more is released.
// Deliveries already released (at most one batch, due within its second)
// still go out.
type ReplayCancelled struct {
	CancelledAt time.Time `json:"cancelled_at"`
}

// Replay is the aggregate of one replay stream. It releases its events in
// batches of RateLimit, at most one batch per second, so the destination
// sees the requested rate even after the engine was down for a while.
type Replay struct {
	version      int64
	requested    ReplayRequested
	released     int
	lastReleased time.Time
	failed       string
	cancelled    bool
}

// Version is the stream version the aggregate reflects.
func (r *Replay) Version() int64 { return r.version }

// Requested is the stream's opening event.
func (r *Replay) Requested() ReplayRequested { return r.requested }

// Failed is why the replay stopped early, or "".
func (r *Replay) Failed() string { return r.failed }

// Cancelled reports whether the replay was cancelled.
func (r *Replay) Cancelled() bool { return r.cancelled }

// Apply folds one stored event into the aggregate.
func (r *Replay) Apply(version int64, eventType string, payload []byte) error {
	r.version = version
	switch eventType {
	case EvReplayRequested:
		if err := json.Unmarshal(payload, &r.requested); err != nil {
			return fmt.Errorf("decode %s: %w", eventType, err)
		}
	case EvReplayReleased:
		var e ReplayReleased
		if err := json.Unmarshal(payload, &e); err != nil {
			return fmt.Errorf("decode %s: %w", eventType, err)
		}
		r.released = e.Offset + e.Count
		r.lastReleased = e.ReleasedAt
	case EvReplayFailed:
		var e ReplayFailed
		if err := json.Unmarshal(payload, &e); err != nil {
			return fmt.Errorf("decode %s: %w", eventType, err)
		}
		r.failed = e.Reason
	case EvReplayCancelled:
		r.cancelled = true
	default:
		return fmt.Errorf("replay stream: unknown event type %q", eventType)
	}
	return nil
}

// NextBatch returns the event ids to release at now and the index of the
// first, or none while the previous batch's second has not passed, after the
// last batch, or once the replay failed.
func (r *Replay) NextBatch(now time.Time) (offset int, ids []string) {
	if r.version == 0 || r.failed != "" || r.cancelled || r.released >= len(r.requested.EventIDs) {
		return r.released, nil
	}
	if !r.lastReleased.IsZero() && now.Before(r.lastReleased.Add(time.Second)) {
		return r.released, nil
	}
	end := min(len(r.requested.EventIDs), r.released+max(1, r.requested.RateLimit))
	return r.released, r.requested.EventIDs[r.released:end]
}

// Release decides a batch: ReplayReleased for count ids starting at offset,
// and the deliveries the caller created for them.
func (r *Replay) Release(offset, count int, deliveryIDs []string, now time.Time) (Decided, error) {
	if offset != r.released || count <= 0 || offset+count > len(r.requested.EventIDs) {
		return Decided{}, Errorf(EConflict, "replay batch %d+%d is not the next one (%d of %d released)", offset, count, r.released, len(r.requested.EventIDs))
	}
	return Decided{Type: EvReplayReleased, Payload: ReplayReleased{Offset: offset, Count: count, DeliveryIDs: deliveryIDs, ReleasedAt: now}}, nil
}

// Fail decides ReplayFailed: the replay stops releasing.
func (r *Replay) Fail(reason string, now time.Time) Decided {
	return Decided{Type: EvReplayFailed, Payload: ReplayFailed{Reason: reason, FailedAt: now}}
}

// Cancel decides ReplayCancelled, or EConflict when the replay has nothing
// left to stop: it failed, was cancelled, or released every event already.
func (r *Replay) Cancel(now time.Time) (Decided, error) {
	switch {
	case r.version == 0:
		return Decided{}, Errorf(ENotFound, "Replay job not found")
	case r.cancelled:
		return Decided{}, Errorf(EConflict, "Replay already cancelled")
	case r.failed != "":
		return Decided{}, Errorf(EConflict, "Replay already stopped: %s", r.failed)
	case r.released >= len(r.requested.EventIDs):
		return Decided{}, Errorf(EConflict, "Replay has released all %d events; their deliveries finish on their own", len(r.requested.EventIDs))
	}
	return Decided{Type: EvReplayCancelled, Payload: ReplayCancelled{CancelledAt: now}}, nil
}
