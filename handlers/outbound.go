package handlers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// OutboundPolicy decides which addresses deliveries may connect to. By
// default loopback, private, link-local (cloud metadata included), CGNAT,
// multicast and unspecified addresses are refused; Allow re-admits ranges.
// The check runs at connect time on the resolved address, so DNS rebinding
// cannot slip past it.
type OutboundPolicy struct {
	Allow []netip.Prefix
}

var blockedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "fd00:ec2::254/128",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Check returns an error when addr may not be connected to.
func (p OutboundPolicy) Check(addr netip.Addr) error {
	addr = addr.Unmap()
	for _, a := range p.Allow {
		if a.Contains(addr) {
			return nil
		}
	}
	for _, b := range blockedPrefixes {
		if b.Contains(addr) {
			return fmt.Errorf("destination address %s is not allowed (private, loopback, link-local or reserved range)", addr)
		}
	}
	return nil
}

// NewHTTPClient returns the delivery client: connection reuse sized for many
// concurrent deliveries, no proxy (it would bypass the address check), no
// redirects (a webhook answer is the response itself).
func NewHTTPClient(p OutboundPolicy) *http.Client {
	dialer := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("destination address %q: %w", address, err)
			}
			return p.Check(ap.Addr())
		},
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           func(ctx context.Context, n, a string) (net.Conn, error) { return dialer.DialContext(ctx, n, a) },
			MaxIdleConns:          2048,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
