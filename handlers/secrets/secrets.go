// Package secrets seals credentials at rest (destinations' secrets, sources'
// verification secrets) with the secretbox keyring, and masks what the API
// and the event log show of them.
package secrets

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// MaskRevealMin is the shortest secret whose last four characters are shown:
// four characters of a shorter one give too much of it away.
const MaskRevealMin = 12

// Mask shows the last four characters of a secret of at least
// MaskRevealMin characters, and nothing of a shorter one.
func Mask(s string) *string {
	if s == "" {
		return nil
	}
	m := "****"
	if len(s) >= MaskRevealMin {
		m += s[len(s)-4:]
	}
	return &m
}

// Fingerprint identifies a secret in the event log without revealing it.
func Fingerprint(secret string) string {
	if secret == "" {
		return ""
	}
	return fmt.Sprintf("%x", Hash(secret))[:16]
}

// Dest are the parts of a destination that are credentials: kept
// only encrypted (destinations.secrets), never in the event log or in the
// columns the API and the read models show.
type Dest struct {
	URL            string            `json:"url,omitempty"`     // the URL with its userinfo, when it has one
	Headers        map[string]string `json:"headers,omitempty"` // credential headers' real values
	SigningSecret  string            `json:"signing_secret,omitempty"`
	PreviousSecret string            `json:"previous_secret,omitempty"`
}

func (d Dest) Empty() bool {
	return d.URL == "" && len(d.Headers) == 0 && d.SigningSecret == "" && d.PreviousSecret == ""
}

// ErrNoEncryptionKey refuses to store a secret on a server without a key.
var ErrNoEncryptionKey = domain.Errorf(domain.EInvalid,
	"Secrets cannot be stored: this server has no encryption key (HOOKSTREAM_ENCRYPTION_KEY); its operator must configure one")

// SealDest encrypts a destination's secrets, bound to its id; "" when it has none.
func SealDest(kr *secretbox.Keyring, id string, sec Dest) (string, error) {
	if sec.Empty() {
		return "", nil
	}
	raw, err := json.Marshal(sec)
	if err != nil {
		return "", fmt.Errorf("encode destination secrets: %w", err)
	}
	out, err := kr.Seal(raw, "destination:"+id)
	if errors.Is(err, secretbox.ErrNoKey) {
		return "", ErrNoEncryptionKey
	}
	return out, err
}

// OpenDest decrypts what SealDest made ("" opens to no secrets).
func OpenDest(kr *secretbox.Keyring, id, sealed string) (Dest, error) {
	var sec Dest
	if sealed == "" {
		return sec, nil
	}
	raw, err := kr.Open(sealed, "destination:"+id)
	if err != nil {
		return sec, fmt.Errorf("destination %s secrets: %w", id, err)
	}
	if err := json.Unmarshal(raw, &sec); err != nil {
		return sec, fmt.Errorf("destination %s secrets: %w", id, err)
	}
	return sec, nil
}

// SealSource encrypts a source's verification secret, bound to its id.
func SealSource(kr *secretbox.Keyring, id, secret string) (string, error) {
	if secret == "" {
		return "", nil
	}
	out, err := kr.Seal([]byte(secret), "source:"+id)
	if errors.Is(err, secretbox.ErrNoKey) {
		return "", ErrNoEncryptionKey
	}
	return out, err
}

// OpenSource decrypts a stored verification secret. A value that is
// not a ciphertext is a row from before encryption: it is returned as it is
// (SealPlaintext encrypts such rows at start).
func OpenSource(kr *secretbox.Keyring, id, stored string) (string, error) {
	if stored == "" || !secretbox.IsSealed(stored) {
		return stored, nil
	}
	raw, err := kr.Open(stored, "source:"+id)
	if err != nil {
		return "", fmt.Errorf("source %s verification secret: %w", id, err)
	}
	return string(raw), nil
}

// CredentialHeader reports whether a destination header carries a
// credential: the standard ones, and any name that says so.
func CredentialHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "authorization", "proxy-authorization", "cookie", "x-api-key":
		return true
	}
	for _, w := range []string{"token", "secret", "key", "password", "passwd", "credential", "session", "auth"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// MaskedURL is a URL as the API, the event log and attempts show it: any
// userinfo replaced by ****.
func MaskedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	shown := u.String() // scheme://host/...
	i := strings.Index(shown, "://")
	return shown[:i+3] + "****@" + shown[i+3:]
}

// origin is a URL's scheme and host (with port), lowercased; "" for none.
func Origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return strings.ToLower(u.Scheme + "://" + u.Host)
}

// IsMaskOf reports whether v is what the API showed for secret: a client
// that sends back the object it read keeps the secret it cannot see.
func IsMaskOf(v, secret string) bool {
	m := Mask(secret)
	return secret != "" && m != nil && v == *m
}

func Hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// Redacted is what a credential is stored as.
const Redacted = "[redacted]"
