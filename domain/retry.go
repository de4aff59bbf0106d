package domain

import (
	"fmt"
	"time"
)

// Backoff types of a destination's retry policy.
const (
	BackoffExponential = "exponential"
	BackoffLinear      = "linear"
	BackoffFixed       = "fixed"
)

// DefaultRetryIntervals are hookstream's default retry delays in seconds: 30s, 5m, 30m, 2h, 24h.
var DefaultRetryIntervals = []int{30, 300, 1800, 7200, 86400}

// RetryPolicy is a destination's retry configuration. MaxRetries counts
// retries, so a delivery makes at most 1 + MaxRetries automatic attempts.
type RetryPolicy struct {
	Enabled    bool
	MaxRetries int
	Backoff    string
	Intervals  []int // seconds
}

// DefaultRetryPolicy is the policy of a destination created without retry settings.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{Enabled: true, MaxRetries: 5, Backoff: BackoffExponential, Intervals: append([]int(nil), DefaultRetryIntervals...)}
}

// Validate returns an EInvalid error naming the offending field.
func (p RetryPolicy) Validate() error {
	if p.MaxRetries < 1 || p.MaxRetries > 10 {
		return Errorf(EInvalid, "Invalid body: 'retry_max_attempts' must be between 1 and 10")
	}
	switch p.Backoff {
	case BackoffExponential, BackoffLinear, BackoffFixed:
	default:
		return Errorf(EInvalid, "Invalid body: 'retry_backoff_type' must be one of exponential, linear, fixed")
	}
	if len(p.Intervals) == 0 || len(p.Intervals) > 20 {
		return Errorf(EInvalid, "Invalid body: 'retry_intervals' must hold 1 to 20 intervals")
	}
	for i, s := range p.Intervals {
		if s < 0 || s > 7*86400 {
			return Errorf(EInvalid, "Invalid body: 'retry_intervals[%d]' must be between 0 and 604800 seconds", i)
		}
	}
	return nil
}

// Delay is the wait before the n-th automatic retry (n from 1):
// exponential intervals[min(n-1, len-1)], linear intervals[0]×n, fixed intervals[0].
func (p RetryPolicy) Delay(n int) time.Duration {
	iv := p.Intervals
	if len(iv) == 0 {
		iv = DefaultRetryIntervals
	}
	if n < 1 {
		n = 1
	}
	var s int
	switch p.Backoff {
	case BackoffLinear:
		s = iv[0] * n
	case BackoffFixed:
		s = iv[0]
	default:
		s = iv[min(n-1, len(iv)-1)]
	}
	return time.Duration(s) * time.Second
}

func (p RetryPolicy) String() string {
	return fmt.Sprintf("%s %v ×%d", p.Backoff, p.Intervals, p.MaxRetries)
}
