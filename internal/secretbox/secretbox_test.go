package secretbox_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hookstream/hookstream/internal/secretbox"
)

func mustKeys(t *testing.T, spec string) *secretbox.Keyring {
	t.Helper()
	kr, err := secretbox.ParseKeys(spec)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestSealOpenBindsRowAndKey(t *testing.T) {
	k1, _ := secretbox.GenerateKey()
	k2, _ := secretbox.GenerateKey()
	old := mustKeys(t, k1)
	sealed, err := old.Seal([]byte("s3cret"), "destination:a")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, "s3cret") || !secretbox.IsSealed(sealed) || secretbox.KeyID(sealed) != old.PrimaryID() {
		t.Fatalf("sealed = %q", sealed)
	}
	if plain, err := old.Open(sealed, "destination:a"); err != nil || string(plain) != "s3cret" {
		t.Fatalf("open = %q, %v", plain, err)
	}
	if _, err := old.Open(sealed, "destination:b"); !errors.Is(err, secretbox.ErrCorrupt) {
		t.Fatalf("another row's aad opened it: %v", err)
	}
	if _, err := mustKeys(t, k2).Open(sealed, "destination:a"); !errors.Is(err, secretbox.ErrUnknownKey) {
		t.Fatalf("another key: %v", err)
	}
	if _, err := (&secretbox.Keyring{}).Seal([]byte("x"), "a"); !errors.Is(err, secretbox.ErrNoKey) {
		t.Fatalf("empty keyring sealed: %v", err)
	}
	// Rotation: the new key first encrypts, the old one still decrypts.
	both := mustKeys(t, k2+","+k1)
	if plain, err := both.Open(sealed, "destination:a"); err != nil || string(plain) != "s3cret" {
		t.Fatalf("rotated keyring open = %q, %v", plain, err)
	}
	resealed, _ := both.Seal([]byte("s3cret"), "destination:a")
	if secretbox.KeyID(resealed) == old.PrimaryID() {
		t.Fatal("rotated keyring sealed under the old key")
	}
	i := len(sealed) - 5 // a character inside the sealed bytes, changed for sure
	swap := byte('A')
	if sealed[i] == 'A' {
		swap = 'B'
	}
	tampered := sealed[:i] + string(swap) + sealed[i+1:]
	if _, err := old.Open(tampered, "destination:a"); !errors.Is(err, secretbox.ErrCorrupt) {
		t.Fatalf("tampered ciphertext: %v", err)
	}
}

func TestParseKeysAcceptsHexAndBase64(t *testing.T) {
	hexKey := strings.Repeat("ab", 32)
	a := mustKeys(t, hexKey)
	b := mustKeys(t, "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=") // the same 32 bytes
	if a.PrimaryID() != b.PrimaryID() {
		t.Fatalf("hex and base64 of one key differ: %s %s", a.PrimaryID(), b.PrimaryID())
	}
	for _, bad := range []string{"short", "q6urq6ur", strings.Repeat("zz", 32)} {
		if _, err := secretbox.ParseKeys(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if kr := mustKeys(t, ""); kr.Enabled() {
		t.Fatal("empty spec gave a key")
	}
}

func TestFingerprintIsKeyed(t *testing.T) {
	k1, _ := secretbox.GenerateKey()
	k2, _ := secretbox.GenerateKey()
	a, b := mustKeys(t, k1), mustKeys(t, k2)
	if a.Fingerprint("shh") == b.Fingerprint("shh") || a.Fingerprint("shh") == a.Fingerprint("shh2") || a.Fingerprint("") != "" {
		t.Fatal("fingerprints are not keyed per secret")
	}
	if strings.Contains(a.Fingerprint("shh"), "shh") {
		t.Fatal("fingerprint shows the secret")
	}
}
