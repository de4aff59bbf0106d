package domain

import "time"

// Stream types. Persisted: never rename.
const (
	StreamSource      = "source"
	StreamDestination = "destination"
	StreamConnection  = "connection"
	StreamEvent       = "event"
	StreamDelivery    = "delivery"
	StreamAPIKey      = "api_key"
	StreamReplay      = "replay"
	StreamCircuit     = "circuit"
	StreamIssue       = "issue"
	StreamEnvironment = "environment"
	StreamOrg         = "organization"
	StreamSession     = "session"
	StreamRetention   = "retention"
)

// Event type names. Persisted: never rename, never derive by reflection.
const (
	EvSourceCreated      = "SourceCreated"
	EvSourceUpdated      = "SourceUpdated"
	EvSourceDeleted      = "SourceDeleted"
	EvDestinationCreated = "DestinationCreated"
	EvDestinationUpdated = "DestinationUpdated"
	EvDestinationDeleted = "DestinationDeleted"
	EvConnectionCreated  = "ConnectionCreated"
	EvConnectionUpdated  = "ConnectionUpdated"
	EvConnectionDeleted  = "ConnectionDeleted"
	EvAPIKeyCreated      = "APIKeyCreated"
	EvAPIKeyRevoked      = "APIKeyRevoked"
	EvOrgCreated         = "OrganizationCreated"
	EvEnvironmentCreated = "EnvironmentCreated"
	EvEnvironmentUpdated = "EnvironmentUpdated"
	EvSessionCreated     = "SessionCreated"
	EvSessionEnded       = "SessionEnded"
	EvLoginLinkCreated   = "LoginLinkCreated"

	EvEventReceived     = "EventReceived"
	EvDeliveryRequested = "DeliveryRequested"
	EvDeliveryAttempted = "DeliveryAttempted"
	EvRetryScheduled    = "RetryScheduled"
	EvRetryRequested    = "RetryRequested"
	EvMovedToDLQ        = "MovedToDLQ"

	EvDestinationDisabled = "DestinationDisabled"
	EvCircuitOpened       = "CircuitOpened"
	EvCircuitHalfOpened   = "CircuitHalfOpened"
	EvCircuitClosed       = "CircuitClosed"
	EvIssueOpened         = "IssueOpened"
	EvIssueRecurred       = "IssueRecurred"
	EvIssueUpdated        = "IssueUpdated"
	EvIssueResolved       = "IssueResolved"

	EvReplayRequested = "ReplayRequested"
	EvReplayReleased  = "ReplayReleased"
	EvReplayFailed    = "ReplayFailed"
	EvReplayCancelled = "ReplayCancelled"
	EvPayloadsExpired = "PayloadsExpired"
	EvHistoryExpired  = "HistoryExpired"
)

// EventTypes is every event type above (a test keeps the list complete).
var EventTypes = []string{
	EvSourceCreated, EvSourceUpdated, EvSourceDeleted, EvDestinationCreated, EvDestinationUpdated, EvDestinationDeleted,
	EvConnectionCreated, EvConnectionUpdated, EvConnectionDeleted, EvAPIKeyCreated, EvAPIKeyRevoked, EvOrgCreated,
	EvEnvironmentCreated, EvEnvironmentUpdated, EvSessionCreated, EvSessionEnded, EvLoginLinkCreated,
	EvEventReceived, EvDeliveryRequested, EvDeliveryAttempted, EvRetryScheduled, EvRetryRequested, EvMovedToDLQ,
	EvDestinationDisabled, EvCircuitOpened, EvCircuitHalfOpened, EvCircuitClosed,
	EvIssueOpened, EvIssueRecurred, EvIssueUpdated, EvIssueResolved,
	EvReplayRequested, EvReplayReleased, EvReplayFailed, EvReplayCancelled, EvPayloadsExpired,
	EvHistoryExpired,
}

// PayloadsExpired records one retention pass over an environment: the
// payloads of Events webhooks and Attempts attempts recorded before Before
// were replaced by their expired form (metadata, ids, sizes and body hashes
// stay), reclaiming Bytes of stored payload; Archive names the NDJSON file
// that kept them first, if the environment archives.
type PayloadsExpired struct {
	Before    time.Time `json:"before"`
	Events    int       `json:"events"`
	Attempts  int       `json:"attempts"`
	Bytes     int64     `json:"bytes"`
	Archive   string    `json:"archive,omitempty"`
	ExpiredAt time.Time `json:"expired_at"`
}

// HistoryExpired records one batch of a history pass over an environment
// that bounds its history: Webhooks webhooks received before Before, every
// one finished, were removed whole with their Deliveries deliveries (LogRows
// events in all, From and To the first and last position), from the log and
// the read models. Archive names the NDJSON file that kept them first, if
// the environment archives.
type HistoryExpired struct {
	Before     time.Time `json:"before"`
	Webhooks   int       `json:"webhooks"`
	Deliveries int       `json:"deliveries"`
	LogRows    int       `json:"log_rows"`
	From       int64     `json:"from_position"`
	To         int64     `json:"to_position"`
	Archive    string    `json:"archive,omitempty"`
	ExpiredAt  time.Time `json:"expired_at"`
}

// Attempt statuses and trigger types of the delivery_attempt object.
const (
	AttemptPending = "pending"
	AttemptSuccess = "success"
	AttemptFailed  = "failed"

	TriggerInitial = "initial"
	TriggerRetry   = "retry"
	TriggerManual  = "manual"
	TriggerReplay  = "replay"
)

// EventReceived is an ingested webhook, exactly as it arrived.
type EventReceived struct {
	EventID    string              `json:"event_id"`
	SourceID   string              `json:"source_id"`
	SourceName string              `json:"source_name"`
	SourceSlug string              `json:"source_slug"`
	Method     string              `json:"method"`
	Headers    map[string][]string `json:"headers"`
	Query      map[string][]string `json:"query"`
	// RawQuery is the query string exactly as it was sent (its encoding,
	// order and repeats), or RawQueryB64 its bytes when text cannot hold
	// them (NUL, invalid UTF-8).
	RawQuery    string `json:"raw_query,omitempty"`
	RawQueryB64 string `json:"raw_query_b64,omitempty"`
	// HeadersB64 holds the exact bytes, base64, of the header values text
	// cannot hold (invalid UTF-8): Headers shows them with U+FFFD.
	HeadersB64  map[string][]string `json:"headers_b64,omitempty"`
	ContentType string              `json:"content_type,omitempty"`
	SourceIP    string              `json:"source_ip,omitempty"`
	BodyB64     string              `json:"body_b64"`
	BodySize    int                 `json:"body_size"`
	Deliveries  int                 `json:"deliveries"`
	ReceivedAt  time.Time           `json:"received_at"`
	// VerificationStatus is "verified" when the source checked a signature, else "none".
	VerificationStatus string `json:"verification_status,omitempty"`
	// DedupStatus is "duplicate" for a webhook seen within the source's window
	// (stored, never delivered), else "unique"; DedupHash identifies its key.
	DedupStatus string `json:"dedup_status,omitempty"`
	DedupHash   string `json:"dedup_hash,omitempty"`
	// Skipped are the connections that did not get a delivery, and why.
	Skipped []SkippedRoute `json:"skipped,omitempty"`
}

// WithoutBodies is e without the webhook as it was sent (body, headers,
// query): what a reader of the log that leaves out
// eventstore.ReceivedPayloadFields decodes, and so what the ingest hands
// the projector in this process (eventstore.NewEvent.Projected).
func (e EventReceived) WithoutBodies() EventReceived {
	e.Headers, e.Query, e.HeadersB64 = nil, nil, nil
	e.RawQuery, e.RawQueryB64, e.BodyB64 = "", "", ""
	return e
}

// SkippedRoute is a connection an ingested event was not delivered through.
type SkippedRoute struct {
	ConnectionID  string `json:"connection_id"`
	DestinationID string `json:"destination_id"`
	Reason        string `json:"reason"` // filtered | connection disabled | destination disabled | source paused | duplicate
}

// DeliveryRequested opens a delivery stream: one event to one connection's destination.
type DeliveryRequested struct {
	DeliveryID      string    `json:"delivery_id"`
	EventID         string    `json:"event_id"`
	ReceivedUUID    string    `json:"received_uuid"` // store event id of the EventReceived
	ConnectionID    string    `json:"connection_id"`
	ConnectionName  string    `json:"connection_name"`
	DestinationID   string    `json:"destination_id"`
	DestinationName string    `json:"destination_name"`
	RequestURL      string    `json:"request_url"`
	RequestMethod   string    `json:"request_method"`
	AttemptID       string    `json:"attempt_id"` // id of attempt 1
	TriggerType     string    `json:"trigger_type"`
	RequestedAt     time.Time `json:"requested_at"`
	ReplayID        string    `json:"replay_id,omitempty"` // set on deliveries a replay made
}

// DeliveryAttempted records one HTTP attempt and what the destination said.
type DeliveryAttempted struct {
	AttemptID       string    `json:"attempt_id"`
	EventID         string    `json:"event_id"`
	AttemptNumber   int       `json:"attempt_number"`
	TriggerType     string    `json:"trigger_type"`
	RequestURL      string    `json:"request_url"`
	RequestMethod   string    `json:"request_method"`
	RequestHeaders  string    `json:"request_headers"`
	RequestBodySize int       `json:"request_body_size"`
	ResponseStatus  *int      `json:"response_status"`
	ResponseHeaders *string   `json:"response_headers"`
	ResponseBody    *string   `json:"response_body"`
	DurationMS      int       `json:"duration_ms"`
	Status          string    `json:"status"` // success | failed
	Error           *string   `json:"error"`
	StartedAt       time.Time `json:"started_at"`
	// ErrorType classifies a failure: http_4xx, http_5xx, timeout or network.
	ErrorType string `json:"error_type,omitempty"`
	// RetryAfterMS is the receiver's Retry-After (429/503), bounded; the next
	// automatic retry waits for it instead of the policy's delay.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	// Final, when set, ends the delivery in the DLQ with this reason (410 Gone).
	Final string `json:"final,omitempty"`
}

// RetryScheduled is the decision to retry automatically, not before NotBefore.
// Replays read it instead of re-running today's policy.
type RetryScheduled struct {
	AfterAttemptID string    `json:"after_attempt_id"`
	NextAttemptID  string    `json:"next_attempt_id"`
	AttemptNumber  int       `json:"attempt_number"`
	NotBefore      time.Time `json:"not_before"`
}

// RetryRequested is a manual retry (the retry endpoint): a new attempt now.
type RetryRequested struct {
	AttemptID     string    `json:"attempt_id"`
	AttemptNumber int       `json:"attempt_number"`
	FromAttemptID string    `json:"from_attempt_id"`
	RequestURL    string    `json:"request_url"`
	RequestMethod string    `json:"request_method"`
	RequestedAt   time.Time `json:"requested_at"`
}

// MovedToDLQ marks the delivery dead-lettered after AttemptID failed.
type MovedToDLQ struct {
	AttemptID string    `json:"attempt_id"`
	EventID   string    `json:"event_id"`
	Reason    string    `json:"reason"`
	DLQAt     time.Time `json:"dlq_at"`
}

// DestinationDisabled records that the engine disabled a destination (a 410 Gone).
type DestinationDisabled struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// CircuitChanged records a circuit transition (CircuitOpened, CircuitHalfOpened, CircuitClosed).
type CircuitChanged struct {
	DestinationID string    `json:"destination_id"`
	FailureCount  int       `json:"failure_count"`
	Reason        string    `json:"reason"`
	ProbeDelivery string    `json:"probe_delivery_id,omitempty"`
	At            time.Time `json:"at"`
}

// IssueChanged records an issue's creation, a new occurrence, a status
// change or its resolution.
type IssueChanged struct {
	IssueID       string     `json:"issue_id"`
	DestinationID string     `json:"destination_id,omitempty"`
	ErrorType     string     `json:"error_type,omitempty"`
	Status        string     `json:"status,omitempty"`
	SnoozedUntil  *time.Time `json:"snoozed_until,omitempty"`
	DeliveryID    string     `json:"delivery_id,omitempty"`
	AttemptID     string     `json:"attempt_id,omitempty"`
	EventID       string     `json:"event_id,omitempty"`
	Error         string     `json:"error,omitempty"`
	StatusCode    *int       `json:"status_code,omitempty"`
	At            time.Time  `json:"at"`
}
