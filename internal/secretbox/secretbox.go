// Package secretbox encrypts the secrets hookstream must be able to read back
// (signing and verification secrets, credential headers, URL userinfo) with
// AES-256-GCM under a keyring: the first key encrypts, every key decrypts,
// so a key can be rotated without a moment where stored secrets are
// unreadable. Ciphertexts name the key that made them and are bound to the
// row they belong to (additional data), so one row's ciphertext cannot be
// moved to another.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Prefix starts every ciphertext: "hsenc:v1:<key id>:<base64url(nonce|sealed)>".
const Prefix = "hsenc:v1:"

// KeySize is the size of a key in bytes (AES-256).
const KeySize = 32

// ErrNoKey is returned when a secret must be encrypted or decrypted and no
// key is configured.
var ErrNoKey = errors.New("no encryption key configured (HOOKSTREAM_ENCRYPTION_KEY)")

// ErrUnknownKey is returned for a ciphertext made under a key the keyring
// does not hold.
var ErrUnknownKey = errors.New("secret was encrypted under a key that is not configured")

// ErrCorrupt is returned for a ciphertext that does not decrypt: damaged,
// or moved from another row.
var ErrCorrupt = errors.New("secret does not decrypt (damaged or not this row's)")

type key struct {
	id   string
	aead cipher.AEAD
	fp   []byte // HMAC key for fingerprints
}

// Keyring holds the encryption keys. The zero value and nil hold none: every
// Seal and Open fails with ErrNoKey.
type Keyring struct {
	keys []key
}

// ParseKeys reads a comma-separated list of keys, each 32 bytes written as
// base64 (standard or URL alphabet, padded or not) or as 64 hex digits. The
// first key encrypts. An empty spec gives an empty keyring.
func ParseKeys(spec string) (*Keyring, error) {
	kr := &Keyring{}
	seen := map[string]bool{}
	for i, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		raw, err := decodeKey(part)
		if err != nil {
			return nil, fmt.Errorf("encryption key %d: %w", i+1, err)
		}
		k, err := newKey(raw)
		if err != nil {
			return nil, err
		}
		if !seen[k.id] {
			seen[k.id] = true
			kr.keys = append(kr.keys, k)
		}
	}
	return kr, nil
}

func decodeKey(s string) ([]byte, error) {
	if len(s) == 2*KeySize {
		if raw, err := hex.DecodeString(s); err == nil {
			return raw, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(s); err == nil {
			if len(raw) != KeySize {
				return nil, fmt.Errorf("want %d bytes, got %d", KeySize, len(raw))
			}
			return raw, nil
		}
	}
	return nil, errors.New("not base64 or hex (generate one with `hookstream secrets gen-key`)")
}

func newKey(raw []byte) (key, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return key{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return key{}, err
	}
	id := sha256.Sum256(append([]byte("hookstream key id\x00"), raw...))
	m := hmac.New(sha256.New, raw)
	m.Write([]byte("hookstream fingerprint v1"))
	return key{id: hex.EncodeToString(id[:6]), aead: aead, fp: m.Sum(nil)}, nil
}

// GenerateKey returns a new random key, base64-encoded.
func GenerateKey() (string, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}

// Enabled reports whether the keyring holds a key.
func (kr *Keyring) Enabled() bool { return kr != nil && len(kr.keys) > 0 }

// PrimaryID is the id of the key that encrypts ("" without one).
func (kr *Keyring) PrimaryID() string {
	if !kr.Enabled() {
		return ""
	}
	return kr.keys[0].id
}

// IDs are the ids of every key, the primary first.
func (kr *Keyring) IDs() []string {
	if kr == nil {
		return nil
	}
	out := make([]string, len(kr.keys))
	for i, k := range kr.keys {
		out[i] = k.id
	}
	return out
}

// Seal encrypts plain under the primary key, bound to aad (the row it
// belongs to, e.g. "destination:<id>").
func (kr *Keyring) Seal(plain []byte, aad string) (string, error) {
	if !kr.Enabled() {
		return "", ErrNoKey
	}
	k := kr.keys[0]
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	sealed := k.aead.Seal(nonce, nonce, plain, []byte(aad))
	return Prefix + k.id + ":" + base64.RawURLEncoding.EncodeToString(sealed), nil
}

// Open decrypts a ciphertext made by Seal with the same aad. It returns
// ErrNoKey, ErrUnknownKey or ErrCorrupt.
func (kr *Keyring) Open(ciphertext, aad string) ([]byte, error) {
	id, body, ok := split(ciphertext)
	if !ok {
		return nil, ErrCorrupt
	}
	if !kr.Enabled() {
		return nil, ErrNoKey
	}
	for _, k := range kr.keys {
		if k.id != id {
			continue
		}
		raw, err := base64.RawURLEncoding.DecodeString(body)
		if err != nil || len(raw) < k.aead.NonceSize() {
			return nil, ErrCorrupt
		}
		plain, err := k.aead.Open(nil, raw[:k.aead.NonceSize()], raw[k.aead.NonceSize():], []byte(aad))
		if err != nil {
			return nil, ErrCorrupt
		}
		return plain, nil
	}
	return nil, ErrUnknownKey
}

// IsSealed reports whether s has the form of a ciphertext.
func IsSealed(s string) bool { return strings.HasPrefix(s, Prefix) }

// KeyID is the id of the key a ciphertext was made under ("" when s is not one).
func KeyID(s string) string {
	id, _, _ := split(s)
	return id
}

func split(s string) (id, body string, ok bool) {
	if !IsSealed(s) {
		return "", "", false
	}
	id, body, ok = strings.Cut(s[len(Prefix):], ":")
	return id, body, ok && id != "" && body != ""
}

// Fingerprint identifies a secret in the event log without revealing it,
// even a short one: an HMAC under a key derived from the primary key (so a
// log alone is no oracle to guess secrets against). "" for an empty secret
// or an empty keyring.
func (kr *Keyring) Fingerprint(secret string) string {
	if secret == "" || !kr.Enabled() {
		return ""
	}
	m := hmac.New(sha256.New, kr.keys[0].fp)
	m.Write([]byte(secret))
	return "hmac:" + hex.EncodeToString(m.Sum(nil)[:12])
}
