package handlers

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hookstream/hookstream/domain"
)

// SigningConfig is a destination's outbound signing, as stored. Mode "hmac"
// signs the body (or "{unix}.{body}") into Header; mode "standard_webhooks"
// sends webhook-id, webhook-timestamp and webhook-signature.
type SigningConfig struct {
	Mode                 string `json:"mode"`
	Secret               string `json:"secret"`
	Algorithm            string `json:"algorithm"`
	Header               string `json:"header"`
	Prefix               string `json:"prefix"`
	IncludeTimestamp     bool   `json:"include_timestamp"`
	TimestampHeader      string `json:"timestamp_header"`
	RotationGraceSeconds int    `json:"rotation_grace_seconds"`
}

// SigningInput is signing_config in a create or update body.
type SigningInput struct {
	Mode                 *string `json:"mode"`
	Secret               *string `json:"secret"`
	Algorithm            *string `json:"algorithm"`
	Header               *string `json:"header"`
	Prefix               *string `json:"prefix"`
	IncludeTimestamp     *bool   `json:"include_timestamp"`
	TimestampHeader      *string `json:"timestamp_header"`
	RotationGraceSeconds *int    `json:"rotation_grace_seconds"`
}

// Signing defaults.
const (
	defaultSignatureHeader = "X-hookstream-Signature"
	// The unix time of a signed timestamp goes in its own header: the
	// documented default (X-hookstream-Timestamp) already carries ISO 8601.
	defaultSigTimestampHeader = "X-hookstream-Signature-Timestamp"
	defaultRotationGrace      = 24 * 60 * 60
)

// applySigning merges in onto cur (nil: none yet) and validates the result.
func applySigning(cur *SigningConfig, in SigningInput) (*SigningConfig, error) {
	c := SigningConfig{Mode: "hmac", Algorithm: "sha256", Header: defaultSignatureHeader, TimestampHeader: defaultSigTimestampHeader,
		RotationGraceSeconds: defaultRotationGrace}
	prefixSet := false
	if cur != nil {
		c, prefixSet = *cur, true
	}
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&c.Mode, in.Mode)
	if in.Secret != nil && !(cur != nil && isMaskOf(*in.Secret, cur.Secret)) {
		c.Secret = *in.Secret // (the masked secret the API showed keeps the stored one)
	}
	set(&c.Algorithm, in.Algorithm)
	set(&c.Header, in.Header)
	set(&c.TimestampHeader, in.TimestampHeader)
	if in.Prefix != nil {
		c.Prefix, prefixSet = *in.Prefix, true
	}
	if in.IncludeTimestamp != nil {
		c.IncludeTimestamp = *in.IncludeTimestamp
	}
	if in.RotationGraceSeconds != nil {
		c.RotationGraceSeconds = *in.RotationGraceSeconds
	}
	c.Mode = strings.ReplaceAll(strings.ToLower(c.Mode), "-", "_")
	switch {
	case c.Mode != "hmac" && c.Mode != "standard_webhooks":
		return nil, invalidf("'signing_config.mode' must be hmac or standard_webhooks")
	case c.Secret == "":
		return nil, invalidf("'signing_config.secret' is required")
	case strings.HasPrefix(c.Secret, "****"):
		return nil, invalidf("'signing_config.secret' looks masked (****…): send the secret itself, or the unchanged masked value of the stored one")
	case len(c.Secret) > 1024:
		return nil, invalidf("'signing_config.secret' is longer than 1024 characters")
	case c.Algorithm != "sha256" && c.Algorithm != "sha1":
		return nil, invalidf("'signing_config.algorithm' must be sha256 or sha1")
	case !validHeaderName(c.Header):
		return nil, invalidf("'signing_config.header' is not a header name")
	case !validHeaderName(c.TimestampHeader):
		return nil, invalidf("'signing_config.timestamp_header' is not a header name")
	case strings.EqualFold(c.TimestampHeader, "X-hookstream-Timestamp"):
		return nil, invalidf("'signing_config.timestamp_header' cannot be X-hookstream-Timestamp, which carries the ISO 8601 time")
	case c.RotationGraceSeconds < 0 || c.RotationGraceSeconds > 7*86400:
		return nil, invalidf("'signing_config.rotation_grace_seconds' must be between 0 and 604800")
	}
	if !prefixSet {
		c.Prefix = c.Algorithm + "="
	}
	if c.Mode == "standard_webhooks" && !strings.HasPrefix(c.Secret, "whsec_") {
		return nil, invalidf("'signing_config.secret' must be a whsec_ secret in standard_webhooks mode")
	}
	return &c, nil
}

func validHeaderName(h string) bool {
	return h != "" && len(h) <= 200 && !strings.ContainsAny(h, " :\r\n\t")
}

// masked is the config as the API shows it: the secret's last four
// characters only (a stored config already holds the mask).
func (c *SigningConfig) masked() map[string]any {
	if c == nil {
		return nil
	}
	secret := maskSecret(c.Secret)
	if strings.HasPrefix(c.Secret, "****") {
		secret = &c.Secret
	}
	return map[string]any{"mode": c.Mode, "secret": secret, "algorithm": c.Algorithm, "header": c.Header,
		"prefix": c.Prefix, "include_timestamp": c.IncludeTimestamp, "timestamp_header": c.TimestampHeader,
		"rotation_grace_seconds": c.RotationGraceSeconds}
}

// stored is the config as destinations.signing_config keeps it: the secret
// masked (it is sealed in destinations.secrets). nil for no signing.
func (c *SigningConfig) stored() ([]byte, error) {
	if c == nil {
		return nil, nil
	}
	cp := *c
	if !strings.HasPrefix(cp.Secret, "****") {
		cp.Secret = *maskSecret(cp.Secret)
	}
	return json.Marshal(cp)
}

// sign adds the signature headers for one request; previous, when not
// empty, is a rotated-out secret still in its grace period (Standard
// Webhooks sends both signatures).
func (c *SigningConfig) sign(h http.Header, msgID string, body []byte, previous string, now time.Time) {
	if c == nil || c.Secret == "" {
		return
	}
	unix := now.Unix()
	if c.Mode == "standard_webhooks" {
		sigs := domain.SignStandardWebhooks(c.Secret, msgID, unix, body)
		if previous != "" {
			sigs += " " + domain.SignStandardWebhooks(previous, msgID, unix, body)
		}
		h.Set("webhook-id", msgID)
		h.Set("webhook-timestamp", strconv.FormatInt(unix, 10))
		h.Set("webhook-signature", sigs)
		return
	}
	msg := body
	if c.IncludeTimestamp {
		msg = append([]byte(strconv.FormatInt(unix, 10)+"."), body...)
		h.Set(c.TimestampHeader, strconv.FormatInt(unix, 10))
	}
	h.Set(c.Header, c.Prefix+domain.SignHMAC(c.Algorithm, []byte(c.Secret), msg))
}

// classifyError describes a failed request for the attempt's error and
// names its class (timeout or network).
func classifyError(err error, timedOut bool, timeoutMS int) (string, string) {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	var opErr *net.OpError
	switch {
	case errors.Is(err, ErrAddressNotAllowed):
		return ErrAddressNotAllowed.Error(), "network"
	case timedOut:
		return fmt.Sprintf("timeout after %dms", timeoutMS), "timeout"
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return "DNS error: no such host " + dnsErr.Name, "network"
		}
		return "DNS error: lookup " + dnsErr.Name + ": " + dnsErr.Err, "network"
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr), errors.As(err, &invalid):
		return "TLS error: certificate not trusted: " + rootCause(err), "network"
	case errors.As(err, &recordErr):
		return "TLS error: the server did not answer TLS: " + rootCause(err), "network"
	case strings.Contains(err.Error(), "tls:"):
		return "TLS error: " + rootCause(err), "network"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "connection error: " + describeDialError(err), "network"
	case errors.As(err, &opErr):
		// Never the addresses: they would map the tenant's DNS to our network.
		return "network error: " + describeDialError(err), "network"
	}
	return "network error: " + rootCause(err), "network"
}

// rootCause strips Go's request wrapping ("Post \"url\": ...").
func rootCause(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "\": "); i >= 0 && strings.HasPrefix(msg, strings.SplitN(msg, " ", 2)[0]+" \"") {
		return msg[i+3:]
	}
	return msg
}

// retryAfter reads a 429/503 Retry-After (seconds or an HTTP date) in ms, 0 when absent.
func retryAfter(status int, h http.Header, now time.Time) int64 {
	if status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable {
		return 0
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.Atoi(v); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0
	}
	return min(max(d, time.Second), domain.MaxRetryAfter).Milliseconds()
}

// redactSent is the sent headers as an attempt records them: the signature
// and the destination's credential headers are not kept.
func redactSent(h http.Header, custom map[string]string, c *SigningConfig) http.Header {
	out := h.Clone()
	for k := range custom {
		if credentialHeader(k) && out.Get(k) != "" {
			out.Set(k, Redacted)
		}
	}
	if c != nil {
		for _, k := range []string{c.Header, "webhook-signature"} {
			if out.Get(k) != "" {
				out.Set(k, Redacted)
			}
		}
	}
	return out
}
