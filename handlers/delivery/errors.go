// Package delivery sends webhooks: the dispatcher that claims due jobs, the
// Watermill delivery handler that sends a batch over HTTP (signed, through
// the SSRF guard) and records each attempt with its retry decision, and the
// outcomes that move circuits, open issues and disable gone destinations.
package delivery

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/handlers/signing"
)

// classifyError describes a failed request for the attempt's error and
// names its class (timeout or network).
func classifyError(err error, timedOut bool, timeoutMS int) (string, string) {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	var alert tls.AlertError
	var opErr *net.OpError
	switch {
	case errors.Is(err, outbound.ErrAddressNotAllowed):
		return outbound.ErrAddressNotAllowed.Error(), "network"
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
	case errors.As(err, &alert):
		return "TLS error: " + rootCause(err), "network"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "connection error: " + outbound.DescribeDialError(err), "network"
	case errors.As(err, &opErr):
		// Never the addresses: they would map the tenant's DNS to our network.
		return "network error: " + outbound.DescribeDialError(err), "network"
	}
	return "network error: " + rootCause(err), "network"
}

// rootCause strips Go's request wrapping ("Post \"url\": ...").
func rootCause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
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
func redactSent(h http.Header, custom map[string]string, c *signing.Config) http.Header {
	out := h.Clone()
	for k := range custom {
		if secrets.CredentialHeader(k) && out.Get(k) != "" {
			out.Set(k, secrets.Redacted)
		}
	}
	if c != nil {
		for _, k := range []string{c.Header, "webhook-signature"} {
			if out.Get(k) != "" {
				out.Set(k, secrets.Redacted)
			}
		}
	}
	return out
}
