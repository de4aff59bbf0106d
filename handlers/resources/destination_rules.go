package resources

import (
	"encoding/json"
	"net/url"
	"strings"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/handlers/signing"
	"github.com/hookstream/hookstream/internal/kit"
)

// apply validates a create or update onto the state.
func (st *destState) apply(in DestinationInput) error {
	if err := domain.ApplyNameSlug(in.Name, in.Slug, &st.Name, &st.Slug); err != nil {
		return err
	}
	if err := st.applyTarget(in); err != nil {
		return err
	}
	if err := st.applyLimits(in); err != nil {
		return err
	}
	if err := st.applySigning(in.SigningConfig); err != nil {
		return err
	}
	return st.Retry.Validate()
}

// applyTarget validates where requests go: URL, method, headers. Stored
// credentials were given for the old host: a URL moved to another one keeps
// only the credential headers this request sets again, so nobody who can
// edit a destination can send its hidden credentials elsewhere.
func (st *destState) applyTarget(in DestinationInput) error {
	oldOrigin := secrets.Origin(st.URL)
	if in.URL != nil && !(st.URL != "" && *in.URL == secrets.MaskedURL(st.URL)) {
		// (The URL as the API shows it, userinfo masked, keeps the stored one.)
		u, err := url.Parse(*in.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(*in.URL) > 2048 {
			return kit.Invalidf("'url' must be an absolute http(s) URL")
		}
		if u.User != nil && u.User.String() == "****" {
			return kit.Invalidf("'url' has masked credentials (****@); send the URL with its real userinfo, or the unchanged URL")
		}
		st.URL = *in.URL
	}
	if in.Method != nil {
		m := strings.ToUpper(*in.Method)
		if m != "POST" && m != "PUT" && m != "PATCH" {
			return kit.Invalidf("'method' must be one of POST, PUT, PATCH")
		}
		st.Method = m
	}
	given := map[string]bool{} // credential headers this request sets anew
	if in.Headers != nil {
		if len(in.Headers.V) > 50 {
			return kit.Invalidf("'headers' may hold at most 50 headers")
		}
		next := make(map[string]string, len(in.Headers.V))
		for k, v := range in.Headers.V {
			if k == "" || len(k) > 200 || len(v) > 8192 || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(v, "\r\n") {
				return kit.Invalidf("'headers' has an invalid header %q", k)
			}
			if cur, ok := st.Headers[k]; ok && secrets.CredentialHeader(k) && secrets.IsMaskOf(v, cur) {
				v = cur // the masked value the API showed: unchanged
			} else if secrets.CredentialHeader(k) {
				given[k] = true
			}
			next[k] = v
		}
		st.Headers = next
	}
	if oldOrigin != "" && secrets.Origin(st.URL) != oldOrigin {
		for k := range st.Headers {
			if secrets.CredentialHeader(k) && !given[k] {
				delete(st.Headers, k)
			}
		}
	}
	return nil
}

// applyLimits validates the timeout, retry policy, status and circuit breaker.
func (st *destState) applyLimits(in DestinationInput) error {
	if in.TimeoutMS != nil {
		if *in.TimeoutMS < 100 || *in.TimeoutMS > 120000 {
			return kit.Invalidf("'timeout_ms' must be between 100 and 120000")
		}
		st.TimeoutMS = *in.TimeoutMS
	}
	if in.RetryEnabled != nil {
		st.Retry.Enabled = bool(*in.RetryEnabled)
	}
	if in.RetryMaxAttempts != nil {
		st.Retry.MaxRetries = *in.RetryMaxAttempts
	}
	if in.RetryBackoffType != nil {
		st.Retry.Backoff = *in.RetryBackoffType
	}
	if in.RetryIntervals != nil {
		st.Retry.Intervals = in.RetryIntervals.V
	}
	if in.Status != nil {
		if err := domain.CheckStatus(*in.Status); err != nil {
			return err
		}
		if *in.Status != "disabled" {
			st.DisabledReason = ""
		}
		st.Status = *in.Status
	}
	if in.CircuitBreakerEnabled != nil {
		st.Circuit.Enabled = bool(*in.CircuitBreakerEnabled)
	}
	if in.CircuitBreakerThreshold != nil {
		if *in.CircuitBreakerThreshold < 1 || *in.CircuitBreakerThreshold > 1000 {
			return kit.Invalidf("'circuit_breaker_threshold' must be between 1 and 1000")
		}
		st.Circuit.Threshold = *in.CircuitBreakerThreshold
	}
	if in.CircuitBreakerResetMS != nil {
		if *in.CircuitBreakerResetMS < 100 || *in.CircuitBreakerResetMS > 86400000 {
			return kit.Invalidf("'circuit_breaker_reset_ms' must be between 100 and 86400000")
		}
		st.Circuit.Reset = time.Duration(*in.CircuitBreakerResetMS) * time.Millisecond
	}
	return nil
}

// applySigning sets, changes (with rotation) or, for null, removes signing.
func (st *destState) applySigning(raw json.RawMessage) error {
	if len(raw) == 0 {
		return nil
	}
	if string(raw) == "null" {
		st.Signing, st.PrevSecret, st.PrevExpires = nil, "", nil
		return nil
	}
	var si signing.Input
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&si); err != nil {
		if e, ok := kit.FieldDecodeError(err, "signing_config"); ok {
			return e
		}
		return kit.Invalidf("'signing_config' must be an object: %v", err)
	}
	old := st.Signing
	next, err := signing.Apply(old, si)
	if err != nil {
		return err
	}
	if old != nil && old.Mode == "standard_webhooks" && old.Secret != next.Secret && next.Mode == "standard_webhooks" && next.RotationGraceSeconds > 0 {
		// Rotation: the old secret keeps signing alongside the new one for the grace period.
		until := st.now().Add(time.Duration(next.RotationGraceSeconds) * time.Second)
		st.PrevSecret, st.PrevExpires = old.Secret, &until
	}
	st.Signing = next
	return nil
}
