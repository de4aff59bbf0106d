// Package signing is a destination's outbound signing: its configuration,
// validation and masking, and the signature headers of one request (HMAC
// or Standard Webhooks).
package signing

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/kit"
)

// Config is a destination's outbound signing, as stored. Mode "hmac"
// signs the body (or "{unix}.{body}") into Header; mode "standard_webhooks"
// sends webhook-id, webhook-timestamp and webhook-signature.
type Config struct {
	Mode                 string `json:"mode"`
	Secret               string `json:"secret"`
	Algorithm            string `json:"algorithm"`
	Header               string `json:"header"`
	Prefix               string `json:"prefix"`
	IncludeTimestamp     bool   `json:"include_timestamp"`
	TimestampHeader      string `json:"timestamp_header"`
	RotationGraceSeconds int    `json:"rotation_grace_seconds"`
}

// Input is signing_config in a create or update body.
type Input struct {
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

// Apply merges in onto cur (nil: none yet) and validates the result.
func Apply(cur *Config, in Input) (*Config, error) {
	c := Config{Mode: "hmac", Algorithm: "sha256", Header: defaultSignatureHeader, TimestampHeader: defaultSigTimestampHeader,
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
	if in.Secret != nil && !(cur != nil && secrets.IsMaskOf(*in.Secret, cur.Secret)) {
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
		return nil, kit.Invalidf("'signing_config.mode' must be hmac or standard_webhooks")
	case c.Secret == "":
		return nil, kit.Invalidf("'signing_config.secret' is required")
	case strings.HasPrefix(c.Secret, "****"):
		return nil, kit.Invalidf("'signing_config.secret' looks masked (****…): send the secret itself, or the unchanged masked value of the stored one")
	case len(c.Secret) > 1024:
		return nil, kit.Invalidf("'signing_config.secret' is longer than 1024 characters")
	case c.Algorithm != "sha256" && c.Algorithm != "sha1":
		return nil, kit.Invalidf("'signing_config.algorithm' must be sha256 or sha1")
	case !ValidHeaderName(c.Header):
		return nil, kit.Invalidf("'signing_config.header' is not a header name")
	case !ValidHeaderName(c.TimestampHeader):
		return nil, kit.Invalidf("'signing_config.timestamp_header' is not a header name")
	case strings.EqualFold(c.TimestampHeader, "X-hookstream-Timestamp"):
		return nil, kit.Invalidf("'signing_config.timestamp_header' cannot be X-hookstream-Timestamp, which carries the ISO 8601 time")
	case c.RotationGraceSeconds < 0 || c.RotationGraceSeconds > 7*86400:
		return nil, kit.Invalidf("'signing_config.rotation_grace_seconds' must be between 0 and 604800")
	}
	if !prefixSet {
		c.Prefix = c.Algorithm + "="
	}
	if c.Mode == "standard_webhooks" && !strings.HasPrefix(c.Secret, "whsec_") {
		return nil, kit.Invalidf("'signing_config.secret' must be a whsec_ secret in standard_webhooks mode")
	}
	return &c, nil
}

func ValidHeaderName(h string) bool {
	return h != "" && len(h) <= 200 && !strings.ContainsAny(h, " :\r\n\t")
}

// masked is the config as the API shows it: the secret's last four
// characters only (a stored config already holds the mask).
func (c *Config) Masked() map[string]any {
	if c == nil {
		return nil
	}
	secret := secrets.Mask(c.Secret)
	if strings.HasPrefix(c.Secret, "****") {
		secret = &c.Secret
	}
	return map[string]any{"mode": c.Mode, "secret": secret, "algorithm": c.Algorithm, "header": c.Header,
		"prefix": c.Prefix, "include_timestamp": c.IncludeTimestamp, "timestamp_header": c.TimestampHeader,
		"rotation_grace_seconds": c.RotationGraceSeconds}
}

// stored is the config as destinations.signing_config keeps it: the secret
// masked (it is sealed in destinations.secrets). nil for no signing.
func (c *Config) Stored() ([]byte, error) {
	if c == nil {
		return nil, nil
	}
	cp := *c
	if !strings.HasPrefix(cp.Secret, "****") {
		cp.Secret = *secrets.Mask(cp.Secret)
	}
	return json.Marshal(cp)
}

// sign adds the signature headers for one request; previous, when not
// empty, is a rotated-out secret still in its grace period (Standard
// Webhooks sends both signatures).
func (c *Config) Sign(h http.Header, msgID string, body []byte, previous string, now time.Time) {
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
