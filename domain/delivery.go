package domain

import (
	"encoding/json"
	"fmt"
	"time"
)

// Decided is an event a decision produced, ready to append.
type Decided struct {
	Type    string
	Payload any
}

// PlannedAttempt is the attempt a delivery will make next.
type PlannedAttempt struct {
	ID      string
	Number  int
	Trigger string
	Due     time.Time
}

// Delivery is the aggregate of one delivery stream: one event to one
// connection's destination. It changes only by applying events and decides
// by returning new ones.
type Delivery struct {
	version     int64
	requested   DeliveryRequested
	lastNumber  int // highest attempt number assigned
	autoRetries int // automatic retries made
	next        *PlannedAttempt
	terminal    string // "", "success" or "dlq"
	reopened    string // terminal state a manual retry reopened
	lastAttempt string
	lastFailed  bool
}

// Version is the stream version the aggregate reflects.
func (d *Delivery) Version() int64 { return d.version }

// Requested is the stream's opening event.
func (d *Delivery) Requested() DeliveryRequested { return d.requested }

// Next is the attempt the delivery waits for, or nil when none is planned.
func (d *Delivery) Next() *PlannedAttempt { return d.next }

// RetryableFailure returns the last attempt when it failed and nothing but
// an automatic retry follows it (waiting in backoff, or dead-lettered): the
// deliveries an event-level or issue-level retry acts on.
func (d *Delivery) RetryableFailure() (attemptID string, ok bool) {
	if !d.lastFailed || d.requested.TriggerType == TriggerReplay {
		return "", false
	}
	if d.terminal == "dlq" || (d.terminal == "" && d.next != nil && d.next.Trigger == TriggerRetry) {
		return d.lastAttempt, true
	}
	return "", false
}

// Terminal is "success", "dlq", "failed" (a replay that failed), or "" while
// the delivery is live.
func (d *Delivery) Terminal() string { return d.terminal }

// Apply folds one stored event into the aggregate.
func (d *Delivery) Apply(version int64, eventType string, payload []byte) error {
	var e any
	switch eventType {
	case EvDeliveryRequested:
		e = &DeliveryRequested{}
	case EvDeliveryAttempted:
		e = &DeliveryAttempted{}
	case EvRetryScheduled:
		e = &RetryScheduled{}
	case EvRetryRequested:
		e = &RetryRequested{}
	case EvMovedToDLQ:
		return d.ApplyDecided(version, Decided{Type: eventType})
	default:
		return fmt.Errorf("delivery stream: unknown event type %q", eventType)
	}
	if err := json.Unmarshal(payload, e); err != nil {
		return fmt.Errorf("decode %s: %w", eventType, err)
	}
	return d.ApplyDecided(version, Decided{Type: eventType, Payload: e})
}

// ApplyDecided folds an event the aggregate decided (a payload by value or
// by pointer) without encoding it: the writer that appends it follows it.
func (d *Delivery) ApplyDecided(version int64, dec Decided) error {
	d.version = version
	switch dec.Type {
	case EvDeliveryRequested:
		e, ok := payloadOf[DeliveryRequested](dec.Payload)
		if !ok {
			return badPayload(dec)
		}
		d.requested = e
		d.lastNumber = 1
		d.next = &PlannedAttempt{ID: e.AttemptID, Number: 1, Trigger: e.TriggerType, Due: e.RequestedAt}
	case EvDeliveryAttempted:
		e, ok := payloadOf[DeliveryAttempted](dec.Payload)
		if !ok {
			return badPayload(dec)
		}
		if e.TriggerType == TriggerRetry {
			d.autoRetries++
		}
		d.lastAttempt = e.AttemptID
		d.lastFailed = e.Status != AttemptSuccess
		d.next = nil
		switch {
		case e.Status == AttemptSuccess:
			d.terminal = AttemptSuccess
		case e.TriggerType == TriggerReplay:
			d.terminal = AttemptFailed // replays are never retried automatically
		}
	case EvRetryScheduled:
		e, ok := payloadOf[RetryScheduled](dec.Payload)
		if !ok {
			return badPayload(dec)
		}
		d.next = &PlannedAttempt{ID: e.NextAttemptID, Number: e.AttemptNumber, Trigger: TriggerRetry, Due: e.NotBefore}
		d.lastNumber = max(d.lastNumber, e.AttemptNumber)
	case EvRetryRequested:
		e, ok := payloadOf[RetryRequested](dec.Payload)
		if !ok {
			return badPayload(dec)
		}
		d.reopened = d.terminal
		d.terminal = ""
		d.next = &PlannedAttempt{ID: e.AttemptID, Number: e.AttemptNumber, Trigger: TriggerManual, Due: e.RequestedAt}
		d.lastNumber = max(d.lastNumber, e.AttemptNumber)
	case EvMovedToDLQ:
		d.terminal = "dlq"
		d.reopened = ""
		d.next = nil
	default:
		return fmt.Errorf("delivery stream: unknown event type %q", dec.Type)
	}
	return nil
}

// payloadOf reads a decided payload given by value or by pointer.
func payloadOf[T any](p any) (T, bool) {
	switch v := p.(type) {
	case T:
		return v, true
	case *T:
		if v != nil {
			return *v, true
		}
	}
	var zero T
	return zero, false
}

func badPayload(dec Decided) error {
	return fmt.Errorf("delivery stream: %s with a %T payload", dec.Type, dec.Payload)
}

// ErrAttemptNotPlanned is returned by RecordAttempt for an attempt the
// delivery is not waiting for (already recorded, or superseded).
var ErrAttemptNotPlanned = Errorf(EConflict, "attempt is not the one the delivery waits for")

// RecordAttempt decides what follows an attempt: DeliveryAttempted, then
// RetryScheduled while automatic retries remain, or MovedToDLQ when they are
// exhausted (or when a manual retry of a terminal delivery failed).
func (d *Delivery) RecordAttempt(res DeliveryAttempted, policy RetryPolicy, now time.Time, newID func() string) ([]Decided, error) {
	if d.next == nil || d.next.ID != res.AttemptID {
		return nil, ErrAttemptNotPlanned
	}
	res.AttemptNumber = d.next.Number
	res.TriggerType = d.next.Trigger
	res.EventID = d.requested.EventID
	out := []Decided{{Type: EvDeliveryAttempted, Payload: res}}
	if res.Status == AttemptSuccess {
		return out, nil
	}
	retriesMade := d.autoRetries
	if res.TriggerType == TriggerRetry {
		retriesMade++
	}
	dlq := func(reason string) []Decided {
		return append(out, Decided{Type: EvMovedToDLQ, Payload: MovedToDLQ{AttemptID: res.AttemptID, EventID: d.requested.EventID, Reason: reason, DLQAt: now}})
	}
	switch {
	case res.TriggerType == TriggerReplay:
		return out, nil // replays are never retried
	case res.Final != "":
		return dlq(res.Final), nil
	case d.reopened != "":
		return dlq("manual retry failed"), nil
	case !policy.Enabled:
		return dlq("retries disabled"), nil
	case retriesMade >= policy.MaxRetries:
		return dlq(fmt.Sprintf("retries exhausted after %d attempts", res.AttemptNumber)), nil
	}
	return append(out, Decided{Type: EvRetryScheduled, Payload: RetryScheduled{
		AfterAttemptID: res.AttemptID,
		NextAttemptID:  newID(),
		AttemptNumber:  d.lastNumber + 1,
		NotBefore:      now.Add(retryDelay(policy, retriesMade+1, res.RetryAfterMS)),
	}}), nil
}

// RequestRetry decides a manual retry: a new attempt now. A pending automatic
// retry is pulled forward (the manual attempt takes its place); a terminal
// delivery gets one extra attempt. It refuses (EInvalid) while a manual retry
// is already waiting to run.
func (d *Delivery) RequestRetry(fromAttemptID, attemptID, url, method string, now time.Time) ([]Decided, error) {
	if d.version == 0 {
		return nil, Errorf(ENotFound, "Delivery attempt not found")
	}
	number := d.lastNumber + 1
	if d.next != nil {
		switch d.next.Trigger {
		case TriggerManual:
			return nil, Errorf(EInvalid, "Retry failed: a retry of this delivery is already in flight")
		case TriggerInitial, TriggerReplay:
			return nil, Errorf(EInvalid, "Retry failed: the delivery's first attempt has not run yet")
		}
		number = d.next.Number
	}
	return []Decided{{Type: EvRetryRequested, Payload: RetryRequested{
		AttemptID: attemptID, AttemptNumber: number, FromAttemptID: fromAttemptID,
		RequestURL: url, RequestMethod: method, RequestedAt: now,
	}}}, nil
}

// MaxRetryAfter bounds how long a receiver's Retry-After can postpone a retry.
const MaxRetryAfter = time.Hour

// retryDelay is the policy's delay before the n-th retry, or the receiver's
// Retry-After (bounded to MaxRetryAfter) when it sent one.
func retryDelay(policy RetryPolicy, n int, retryAfterMS int64) time.Duration {
	if retryAfterMS > 0 {
		return min(time.Duration(retryAfterMS)*time.Millisecond, MaxRetryAfter)
	}
	return policy.Delay(n)
}

// DeliveryState is what RecordAttempt needs of a delivery, kept beside its
// job row by the writers that hold the folded aggregate, so that recording an
// attempt need not load the stream. It is only as good as Version: an append
// at that expected version fails when the stream has moved on.
type DeliveryState struct {
	Version     int64
	EventID     string
	Next        PlannedAttempt
	LastNumber  int
	AutoRetries int
	Reopened    string
}

// State is the delivery's DeliveryState; ok is false when no attempt is
// planned (a terminal delivery has nothing to record).
func (d *Delivery) State() (s DeliveryState, ok bool) {
	if d.next == nil {
		return s, false
	}
	return DeliveryState{Version: d.version, EventID: d.requested.EventID, Next: *d.next, LastNumber: d.lastNumber,
		AutoRetries: d.autoRetries, Reopened: d.reopened}, true
}

// RestoreDelivery is the delivery a DeliveryState describes: enough to
// RecordAttempt and to Apply what that decides. Requested() holds the event
// id only.
func RestoreDelivery(s DeliveryState) *Delivery {
	next := s.Next
	return &Delivery{version: s.Version, requested: DeliveryRequested{EventID: s.EventID}, lastNumber: s.LastNumber,
		autoRetries: s.AutoRetries, next: &next, reopened: s.Reopened}
}
