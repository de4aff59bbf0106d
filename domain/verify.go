package domain

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Ingest verification types (hookstream also spells them with hyphens).
const (
	VerifyHMACSHA256  = "hmac_sha256"
	VerifyHMACSHA1    = "hmac_sha1"
	VerifyStdWebhooks = "standard_webhooks"
)

// NormalizeVerificationType returns the canonical spelling, or false.
func NormalizeVerificationType(s string) (string, bool) {
	switch v := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(s)), "-", "_"); v {
	case VerifyHMACSHA256, VerifyHMACSHA1, VerifyStdWebhooks:
		return v, true
	}
	return "", false
}

func hmacHex(newHash func() hash.Hash, secret, msg []byte) string {
	m := hmac.New(newHash, secret)
	m.Write(msg)
	return hex.EncodeToString(m.Sum(nil))
}

// SignHMAC is the hex HMAC of msg with algorithm sha256 or sha1.
func SignHMAC(algorithm string, secret, msg []byte) string {
	if algorithm == "sha1" {
		return hmacHex(sha1.New, secret, msg)
	}
	return hmacHex(sha256.New, secret, msg)
}

// VerifyHMACSignature checks a hex HMAC signature of body (a "sha256=" or
// "sha1=" prefix is stripped) in constant time.
func VerifyHMACSignature(verificationType, secret, signature string, body []byte) bool {
	sig := strings.TrimSpace(signature)
	for _, p := range []string{"sha256=", "sha1="} {
		if len(sig) > len(p) && strings.EqualFold(sig[:len(p)], p) {
			sig = sig[len(p):]
			break
		}
	}
	alg := "sha256"
	if verificationType == VerifyHMACSHA1 {
		alg = "sha1"
	}
	want := SignHMAC(alg, []byte(secret), body)
	return subtle.ConstantTimeCompare([]byte(strings.ToLower(sig)), []byte(want)) == 1
}

// StandardWebhooksKey decodes a Standard Webhooks secret ("whsec_" + base64);
// a secret that is not base64 is used as raw bytes.
func StandardWebhooksKey(secret string) []byte {
	raw := strings.TrimPrefix(secret, "whsec_")
	if key, err := base64.StdEncoding.DecodeString(raw); err == nil && len(key) > 0 {
		return key
	}
	return []byte(raw)
}

// SignStandardWebhooks is the "v1,<base64>" signature of id.timestamp.body.
func SignStandardWebhooks(secret, id string, timestamp int64, body []byte) string {
	m := hmac.New(sha256.New, StandardWebhooksKey(secret))
	fmt.Fprintf(m, "%s.%d.", id, timestamp)
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// StandardWebhooksTolerance is how far webhook-timestamp may be from now.
const StandardWebhooksTolerance = 5 * time.Minute

// VerifyStandardWebhooks checks webhook-id, webhook-timestamp and
// webhook-signature (space-separated "v1,<base64>" entries, any may match).
func VerifyStandardWebhooks(secret, id, timestamp, signatures string, body []byte, now time.Time) error {
	if id == "" || timestamp == "" || signatures == "" {
		return Errorf(EUnauthorized, "Invalid signature: webhook-id, webhook-timestamp and webhook-signature are required")
	}
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return Errorf(EUnauthorized, "Invalid signature: webhook-timestamp is not a unix time")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > StandardWebhooksTolerance || d < -StandardWebhooksTolerance {
		return Errorf(EUnauthorized, "Invalid signature: webhook-timestamp is outside the 5 minute tolerance")
	}
	want := SignStandardWebhooks(secret, id, ts, body)
	for _, s := range strings.Fields(signatures) {
		if subtle.ConstantTimeCompare([]byte(s), []byte(want)) == 1 {
			return nil
		}
	}
	return Errorf(EUnauthorized, "Invalid signature")
}

// ParseIPList validates a list of IPv4/IPv6 addresses and CIDRs.
func ParseIPList(field string, list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for i, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, Errorf(EInvalid, "Invalid body: '%s[%d]' must be an IPv4 or IPv6 address or CIDR", field, i)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// CheckIP applies a source's IP lists: the deny list first, then the allow
// list (when it is not empty). It returns the refusal reason, or "".
func CheckIP(ip string, allow, deny []string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		if len(allow) > 0 {
			return "IP is not in allow list"
		}
		return ""
	}
	a = a.Unmap()
	in := func(list []string) bool {
		prefixes, _ := ParseIPList("", list)
		for _, p := range prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if in(deny) {
		return "IP is in deny list"
	}
	if len(allow) > 0 && !in(allow) {
		return "IP is not in allow list"
	}
	return ""
}

// Dedup strategies.
const (
	DedupPayloadHash = "payload_hash"
	DedupHeaderField = "header_field"
	DedupBodyField   = "body_field"
)

// DedupKey is the key a webhook is deduplicated on, or false when it has
// none (the header or body field is missing: such webhooks are never
// duplicates).
func DedupKey(strategy, field string, headers map[string][]string, body []byte) (string, bool) {
	switch strategy {
	case DedupPayloadHash:
		sum := sha256.Sum256(body)
		return hex.EncodeToString(sum[:]), true
	case DedupHeaderField:
		for k, v := range headers {
			if strings.EqualFold(k, field) && len(v) > 0 && v[0] != "" {
				return boundedKey("h:", v[0]), true
			}
		}
	case DedupBodyField:
		var doc any
		if json.Unmarshal(body, &doc) != nil {
			return "", false
		}
		for _, part := range strings.Split(field, ".") {
			m, ok := doc.(map[string]any)
			if !ok {
				return "", false
			}
			if doc, ok = m[part]; !ok {
				return "", false
			}
		}
		if doc == nil {
			return "", false
		}
		raw, err := json.Marshal(doc)
		if err != nil {
			return "", false // a field that cannot be re-encoded is no key
		}
		return boundedKey("b:", string(raw)), true
	}
	return "", false
}

// MaxDedupKey is the longest dedup key kept as it is; a longer one, or one
// PostgreSQL text cannot hold, is kept as its SHA-256.
const MaxDedupKey = 128

func boundedKey(prefix, v string) string {
	if len(v) <= MaxDedupKey && utf8.ValidString(v) && !strings.ContainsRune(v, 0) {
		return prefix + v
	}
	sum := sha256.Sum256([]byte(v))
	return prefix + "sha256:" + hex.EncodeToString(sum[:])
}
