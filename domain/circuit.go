package domain

import "time"

// Circuit states, as the API spells them.
const (
	CircuitClosed   = "closed"
	CircuitOpen     = "open"
	CircuitHalfOpen = "half_open"
)

// CircuitConfig is a destination's breaker configuration.
type CircuitConfig struct {
	Enabled   bool
	Threshold int           // consecutive failures that open it (default 5)
	Reset     time.Duration // cooldown before the half-open probe (default 60 s)
}

// Circuit is one destination's breaker. Closed: deliveries flow and
// consecutive failures are counted. Open: new and due deliveries wait,
// spending no attempt, until the cooldown passes. Half-open: one probe goes
// out; its success closes the circuit, its failure opens it again.
type Circuit struct {
	State          string
	Failures       int
	OpenedAt       *time.Time
	LastTransition *time.Time
	Probe          string // the half-open circuit's probe delivery
}

// Record folds one attempt's outcome and returns the transition it caused
// (EvCircuitOpened or EvCircuitClosed), or "".
func (c *Circuit) Record(success bool, cfg CircuitConfig, now time.Time) string {
	if c.State == "" {
		c.State = CircuitClosed
	}
	if success {
		c.Failures = 0
		if c.State == CircuitClosed {
			return ""
		}
		c.State, c.Probe, c.OpenedAt, c.LastTransition = CircuitClosed, "", nil, &now
		return EvCircuitClosed
	}
	c.Failures++
	if !cfg.Enabled {
		return ""
	}
	switch {
	case c.State == CircuitHalfOpen, c.State == CircuitClosed && c.Failures >= max(1, cfg.Threshold):
		c.State, c.Probe, c.OpenedAt, c.LastTransition = CircuitOpen, "", &now, &now
		return EvCircuitOpened
	}
	return ""
}

// ErrorClass is the issue grouping of a failed attempt: http_4xx, http_5xx,
// timeout or network.
func ErrorClass(a DeliveryAttempted) string {
	switch {
	case a.ResponseStatus != nil && *a.ResponseStatus >= 500:
		return "http_5xx"
	case a.ResponseStatus != nil:
		return "http_4xx"
	case a.ErrorType != "":
		return a.ErrorType
	}
	return "network"
}
