package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// localKeyFile keeps `make run`'s encryption key beside its cluster.
const localKeyFile = ".data/encryption_key"

// loadKeyring reads HOOKSTREAM_ENCRYPTION_KEY (comma-separated, the first
// encrypts). Without it, a process on the project-local cluster uses
// .data/encryption_key, generated on first use; anywhere else the keyring is
// empty and storing a secret is refused.
func loadKeyring(db *database, log *slog.Logger) (*secretbox.Keyring, error) {
	spec, source, err := localSecret(db, log, "HOOKSTREAM_ENCRYPTION_KEY", localKeyFile, "encryption key")
	if err != nil {
		return nil, err
	}
	kr, err := secretbox.ParseKeys(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return kr, nil
}

// localAuthSecretFile keeps `make run`'s session-cookie signing secret.
const localAuthSecretFile = ".data/auth_secret"

// loadAuthSecret reads HOOKSTREAM_AUTH_SECRET, the secret session cookies
// are signed with (Better Auth's format, so a Better Auth server sharing it
// can issue sessions). On the project-local cluster it is generated under
// .data/ when unset; elsewhere cookies are unsigned random tokens.
func loadAuthSecret(db *database, log *slog.Logger) ([]byte, error) {
	s, _, err := localSecret(db, log, "HOOKSTREAM_AUTH_SECRET", localAuthSecretFile, "session secret")
	if err != nil || s == "" {
		return nil, err
	}
	return []byte(s), nil
}

// localSecret returns the environment variable's value, else (on the
// project-local cluster only) the contents of file, generating a random
// value there (0600) on first use; source names where the value came from.
func localSecret(db *database, log *slog.Logger, envVar, file, what string) (value, source string, err error) {
	if v := os.Getenv(envVar); v != "" {
		return v, envVar, nil
	}
	if db == nil || !db.Local {
		return "", envVar, nil
	}
	path, err := filepath.Abs(file)
	if err != nil {
		return "", file, err
	}
	raw, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(raw)), path, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", path, fmt.Errorf("read %s: %w", path, err)
	}
	k, err := secretbox.GenerateKey()
	if err != nil {
		return "", path, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", path, err
	}
	if err := os.WriteFile(path, []byte(k+"\n"), 0o600); err != nil {
		return "", path, fmt.Errorf("write %s: %w", path, err)
	}
	log.Info("generated the local "+what, "path", path)
	return k, path, nil
}

// prepareSecrets checks that the keyring holds every key stored secrets were
// made under, and encrypts secrets left in plaintext by older versions.
func prepareSecrets(ctx context.Context, db *database, kr *secretbox.Keyring, log *slog.Logger) error {
	if err := resources.CheckKeys(ctx, db.Pool, kr); err != nil {
		return err
	}
	rep, err := resources.SealPlaintext(ctx, db.Pool, kr)
	if err != nil {
		return fmt.Errorf("encrypt stored plaintext secrets: %w", err)
	}
	if rep.Sources+rep.Destinations > 0 {
		log.Info("encrypted plaintext secrets", "sources", rep.Sources, "destinations", rep.Destinations, "key", kr.PrimaryID())
	}
	if !kr.Enabled() {
		log.Warn("no encryption key (HOOKSTREAM_ENCRYPTION_KEY): sources and destinations with secrets cannot be created")
	}
	return nil
}

const secretsUsage = `hookstream secrets gen-key [--json] print a new random key (base64, 32 bytes)
  hookstream secrets status [--json]
                                    the configured keys and how many stored secrets each encrypts
  hookstream secrets rotate-key [--json]
                                    re-encrypt every stored secret under the first key of
                                    HOOKSTREAM_ENCRYPTION_KEY (set it to NEW,OLD first)

Rotation: 1) hookstream secrets gen-key; 2) set HOOKSTREAM_ENCRYPTION_KEY=NEW,OLD on every
process and restart them (both keys decrypt, NEW encrypts); 3) hookstream secrets rotate-key;
4) set HOOKSTREAM_ENCRYPTION_KEY=NEW.

Examples:
  hookstream secrets status --json
  HOOKSTREAM_ENCRYPTION_KEY=$NEW,$OLD hookstream secrets rotate-key
`

func cmdSecrets(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		return usageError{"secrets: want a subcommand", secretsUsage}
	}
	switch args[0] {
	case "-h", "--help", "help":
		return helpRequest{secretsUsage}
	case "gen-key", "status", "rotate-key":
	default:
		return usageError{fmt.Sprintf("secrets: unknown subcommand %q", args[0]), secretsUsage}
	}
	fs := flag.NewFlagSet("secrets "+args[0], flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseFlags(fs, args[1:], secretsUsage)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Sprintf("secrets %s: unexpected argument %q", args[0], pos[0]), secretsUsage}
	}
	if args[0] == "gen-key" {
		k, err := secretbox.GenerateKey()
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]string{"key": k})
		}
		_, err = fmt.Fprintln(stdout, k)
		return err
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	kr, err := loadKeyring(db, log)
	if err != nil {
		return err
	}
	if args[0] == "rotate-key" {
		rep, err := resources.RotateSecrets(ctx, db.Pool, kr)
		if err != nil {
			return fmt.Errorf("rotate: %w", err)
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]any{"key": kr.PrimaryID(), "sources": rep.Sources, "destinations": rep.Destinations})
		}
		_, err = fmt.Fprintf(stdout, "re-encrypted %d source and %d destination secrets under key %s\n", rep.Sources, rep.Destinations, kr.PrimaryID())
		return err
	}
	used, err := resources.SecretKeyIDs(ctx, db.Pool)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"primary": kr.PrimaryID(), "configured": kr.IDs(), "stored_by_key": used})
	}
	fmt.Fprintf(stdout, "primary key: %s\nconfigured:  %s\n", orDash(kr.PrimaryID()), orDash(strings.Join(kr.IDs(), ", ")))
	ids := make([]string, 0, len(used))
	for id := range used {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(stdout, "stored under %s: %d\n", id, used[id])
	}
	return nil
}
