package delivery

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"testing"
)

func TestRootCauseUnwrapsTheRequestError(t *testing.T) {
	inner := errors.New("connection reset by peer")
	if got := rootCause(&url.Error{Op: "Post", URL: "https://example.com/a\": b", Err: inner}); got != inner.Error() {
		t.Errorf("rootCause = %q", got)
	}
	if got := rootCause(inner); got != inner.Error() {
		t.Errorf("rootCause of a bare error = %q", got)
	}
}

func TestTLSAlertIsATLSError(t *testing.T) {
	err := &url.Error{Op: "Post", URL: "https://example.com", Err: fmt.Errorf("remote error: %w", tls.AlertError(40))}
	msg, class := classifyError(err, false, 1000)
	if class != "network" || msg != "TLS error: remote error: tls: handshake failure" {
		t.Errorf("classifyError = %q, %q", msg, class)
	}
}
