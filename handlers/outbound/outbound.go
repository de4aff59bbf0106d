// Package outbound decides which addresses deliveries may reach (the SSRF guard)
// and builds the HTTP client that enforces it at connect time.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrAddressNotAllowed is the outbound guard's refusal. Its text never names
// the address: a tenant must not learn what its hostname resolved to.
var ErrAddressNotAllowed = errors.New("destination address not allowed")

// Policy decides which addresses deliveries may connect to. By
// default every range that is not globally routable unicast is refused:
// loopback, private, link-local (cloud metadata included), CGNAT, site-local,
// multicast, broadcast, unspecified, documentation and benchmarking ranges,
// and the IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64,
// 6to4, Teredo), whatever they embed. Allow re-admits ranges. Zoned addresses
// (fe80::1%eth0) are always refused: a zone names an interface of this host.
// The check runs at connect time on the resolved address, so DNS rebinding
// cannot slip past it.
type Policy struct {
	Allow []netip.Prefix
}

// blockedPrefixes are the IANA special-purpose ranges no delivery may reach.
var blockedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		// IPv4
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
		"203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", // 240/4 includes 255.255.255.255
		// IPv6
		"::/96",          // unspecified, loopback and IPv4-compatible (::a.b.c.d)
		"64:ff9b::/96",   // NAT64
		"64:ff9b:1::/48", // local-use NAT64
		"100::/64",       // discard-only
		"2001::/23",      // IETF protocol assignments, Teredo (2001::/32) among them
		"2001:db8::/32",  // documentation
		"2002::/16",      // 6to4
		"3fff::/20",      // documentation
		"5f00::/16",      // SRv6 SIDs
		"fc00::/7",       // unique local
		"fe80::/10",      // link-local
		"fec0::/10",      // site-local (deprecated, still routed by some stacks)
		"ff00::/8",       // multicast
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Check returns ErrAddressNotAllowed when addr may not be connected to.
func (p Policy) Check(addr netip.Addr) error {
	if !addr.IsValid() || addr.Zone() != "" {
		return ErrAddressNotAllowed
	}
	addr = addr.Unmap() // ::ffff:a.b.c.d is a.b.c.d
	for _, a := range p.Allow {
		if a.Contains(addr) {
			return nil
		}
	}
	for _, b := range blockedPrefixes {
		if b.Contains(addr) {
			return ErrAddressNotAllowed
		}
	}
	return nil
}

// CheckURL refuses a destination URL whose host is an address literal the
// policy does not allow, in any spelling a resolver may accept: IPv6 with a
// zone, IPv4-mapped and -compatible forms, and the shorthand IPv4 forms
// (2130706433, 0x7f.1, 0177.0.0.1, 127.1). Host names are checked at connect
// time, on what they resolve to.
func (p Policy) CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	host := u.Hostname()
	if strings.Contains(host, "%") || strings.Contains(u.Host, "%") {
		return ErrAddressNotAllowed // a zone: an interface of this host
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return p.Check(a)
	}
	if a, ok := parseLooseIPv4(host); ok {
		return p.Check(a)
	}
	return nil
}

// parseLooseIPv4 parses the IPv4 spellings inet_aton accepts: one to four
// parts, each decimal, octal (leading 0) or hex (0x), the last part filling
// the remaining bytes.
func parseLooseIPv4(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(s, ".")
	parts := strings.Split(s, ".")
	if s == "" || len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, part := range parts {
		base, digits := 10, part
		switch {
		case strings.HasPrefix(strings.ToLower(part), "0x"):
			base, digits = 16, part[2:]
			if digits == "" {
				digits = "0"
			}
		case len(part) > 1 && part[0] == '0':
			base, digits = 8, part[1:]
		}
		v, err := strconv.ParseUint(digits, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	var n uint64
	for i, v := range vals[:len(vals)-1] {
		if v > 255 {
			return netip.Addr{}, false
		}
		n |= v << (24 - 8*i)
	}
	last := vals[len(vals)-1]
	if last >= 1<<(8*(5-len(vals))) {
		return netip.Addr{}, false
	}
	n |= last
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

// guardedDialer is a net.Dialer whose Control hook refuses disallowed
// addresses after resolution, for every address a host name resolves to.
func guardedDialer(p Policy) *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return ErrAddressNotAllowed
			}
			return p.Check(ap.Addr())
		},
	}
}

// maxResponseHeaderBytes bounds what a destination's response headers may
// occupy in memory; an attempt records at most ResponseHeadersLimit of them.
const maxResponseHeaderBytes = 1 << 20

// NewHTTPClient returns the delivery client: connection reuse sized for many
// concurrent deliveries, no proxy (it would bypass the address check), no
// redirects (a webhook answer is the response itself), response headers
// bounded.
func NewHTTPClient(p Policy) *http.Client {
	dialer := guardedDialer(p)
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            func(ctx context.Context, n, a string) (net.Conn, error) { return dialer.DialContext(ctx, n, a) },
			MaxIdleConns:           2048,
			MaxIdleConnsPerHost:    256,
			IdleConnTimeout:        90 * time.Second,
			TLSHandshakeTimeout:    10 * time.Second,
			ExpectContinueTimeout:  time.Second,
			ForceAttemptHTTP2:      true,
			MaxResponseHeaderBytes: maxResponseHeaderBytes,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// DescribeDialError is a dial failure without the address it was dialling.
func DescribeDialError(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return fmt.Sprintf("%s: %s", opErr.Op, opErr.Err.Error())
	}
	return "could not connect"
}
