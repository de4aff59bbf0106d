package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/ingest"
	"github.com/hookstream/hookstream/handlers/redeliver"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// Every command answers -h and --help with its usage on stdout and status
// 0; a flag it does not know is status 2 with the usage on stderr.
func TestHelpAndBadArgumentsExitCodes(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?connect_timeout=1") // help must not need a database
	ctx := context.Background()
	for _, cmd := range [][]string{{"serve"}, {"migrate"}, {"keys"}, {"audit"}, {"events"}, {"replay"}, {"projections"}, {"orgs"}, {"envs"}, {"secrets"}, {"send-test"}, {"retention"}, {"login-link"}} {
		for _, flag := range []string{"-h", "--help"} {
			var out, errOut bytes.Buffer
			args := append(append([]string(nil), cmd...), flag)
			if code := run(ctx, args, &out, &errOut); code != 0 {
				t.Errorf("%v: exit %d, want 0 (stderr %q)", args, code, errOut.String())
			}
			if !strings.Contains(strings.ToLower(out.String()), "usage") || !strings.Contains(out.String(), "Examples:") {
				t.Errorf("%v: stdout %q has no usage with examples", args, out.String())
			}
		}
	}
	for _, args := range [][]string{{"secrets", "status", "-h"}, {"replay", "cancel", "-h"}, {"events", "tail", "-h"}, {"keys", "create", "--help"}} {
		var out, errOut bytes.Buffer
		if code := run(ctx, args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "Usage") {
			t.Errorf("%v: exit %d, stdout %q", args, code, out.String())
		}
	}
	for _, args := range [][]string{{"serve", "--no-such-flag"}, {"serve", "stray"}, {"audit", "--no-such-flag"}, {"events", "tail", "--no-such-flag"},
		{"keys", "list", "--no-such-flag"}, {"migrate", "--no-such-flag"}, {"migrate", "stray"}, {"replay", "--no-such-flag"}, {"nope"},
		{"secrets"}, {"secrets", "nope"}, {"secrets", "gen-key", "--nope"}, {"send-test", "--destination", "x", "stray"}, {"login-link", "stray"}, {"login-link", "--ttl", "48h"}, {"login-link", "--url", "ftp://x"},
		{"events", "tail", "--type", "Nope"}, {"events", "export", "--from", "2026-01-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z", "--type", "EventRecieved"}} {
		var out, errOut bytes.Buffer
		if code := run(ctx, args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, errOut.String())
		}
		if !strings.Contains(strings.ToLower(errOut.String()), "usage") {
			t.Errorf("%v: stderr %q has no usage", args, errOut.String())
		}
	}
}

// The commands a script reads print JSON with --json (those needing a
// database are covered against one in their own tests).
func TestJSONOutputOfCommandsWithoutADatabase(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{{"version", "--json"}, {"secrets", "gen-key", "--json"}} {
		var out, errOut bytes.Buffer
		var v map[string]any
		if code := run(ctx, args, &out, &errOut); code != 0 || json.Unmarshal(out.Bytes(), &v) != nil || len(v) != 1 {
			t.Errorf("%v = %d %q %q", args, code, out.String(), errOut.String())
		}
	}
}

// migrate --json lists what it applied: everything on a new database, then nothing.
func TestMigrateJSON(t *testing.T) {
	ctx := context.Background()
	admin := pgtest.AdminURL(t)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("migrate_json_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(context.Background(), admin); err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			_ = c.Close(context.Background())
		}
	})
	t.Setenv("DATABASE_URL", pgtest.WithDatabase(admin, name))
	for i, want := range []bool{true, false} {
		var out, errOut bytes.Buffer
		var v struct{ Applied []string }
		if code := run(context.Background(), []string{"migrate", "--json"}, &out, &errOut); code != 0 || json.Unmarshal(out.Bytes(), &v) != nil ||
			(len(v.Applied) > 0) != want {
			t.Fatalf("migrate --json run %d = %d %q %q", i+1, code, out.String(), errOut.String())
		}
	}
}

// An operator command run outside the project directory, without
// DATABASE_URL, fails and says why; it does not make a new empty cluster
// and report success from it.
func TestOperatorCommandElsewhereDoesNotMakeAnEmptyCluster(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	dir := t.TempDir()
	t.Chdir(dir)
	for _, args := range [][]string{{"events", "export", "--from", "2026-01-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z"}, {"keys", "list"}, {"projections", "status"}} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 1 {
			t.Errorf("%v: exit %d, want 1 (stdout %q)", args, code, out.String())
		}
		if !strings.Contains(errOut.String(), "no local database") {
			t.Errorf("%v: stderr %q does not say why", args, errOut.String())
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("the commands left %v in the directory", entries)
	}
}

// On the project-local cluster the first API key is also kept in
// .data/api_key (0600), so another shell can export it; with DATABASE_URL
// it is only printed.
func TestFirstKeyIsKeptBesideTheLocalCluster(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.MkdirAll(".data", 0o700); err != nil {
		t.Fatal(err)
	}
	for _, local := range []bool{false, true} {
		pool := pgtest.NewPool(t)
		if _, err := pool.Exec(context.Background(), `DELETE FROM api_keys`); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := bootstrapKey(context.Background(), &database{Pool: pool, Local: local}, &out); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(localAPIKeyFile)
		if !local {
			if err == nil {
				t.Fatalf("with DATABASE_URL the key was written to %s", localAPIKeyFile)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		key := strings.TrimSpace(string(raw))
		if !strings.HasPrefix(key, "hs_") || !strings.Contains(out.String(), "export HOOKSTREAM_API_KEY="+key) {
			t.Fatalf("kept %q, printed %q", key, out.String())
		}
		if st, _ := os.Stat(localAPIKeyFile); st.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", localAPIKeyFile, st.Mode().Perm())
		}
	}
}

// replay status says why a replay's deliveries wait and what to do about
// it; replay cancel stops it, and cancelling it again is refused (exit 1).
func TestReplayStatusSaysWhyItWaitsAndCancelStopsIt(t *testing.T) {
	ctx := context.Background()
	pool := commandDatabase(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool})
	defer svc.Close()
	tenant := domain.Tenant{OrgID: "0123456789abcdef0123456789abcdef", EnvID: "fedcba9876543210fedcba9876543210", Actor: "test"}
	src, err := svc.CreateSource(ctx, tenant, resources.SourceInput{Name: ptr("s")}, "r")
	if err != nil {
		t.Fatal(err)
	}
	d, err := svc.CreateDestination(ctx, tenant, resources.DestinationInput{Name: ptr("d"), URL: ptr("https://example.com/hook")}, "r")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateConnection(ctx, tenant, resources.ConnectionInput{SourceID: &src.ID, DestinationID: &d.ID, Name: ptr("c")}, "r"); err != nil {
		t.Fatal(err)
	}
	from := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	for i := 0; i < 3; i++ {
		tg, err := svc.LookupIngest(ctx, src.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Ingest(ctx, tg, ingest.IngestRequest{Method: "POST", Body: []byte(`{}`), Headers: map[string][]string{}}); err != nil {
			t.Fatal(err)
		}
	}
	to := time.Now().UTC().Add(time.Minute).Format(time.RFC3339)
	cli := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		code := run(ctx, args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	out, errOut, code := cli("replay", "--destination", d.ID, "--from", from, "--to", to, "--rate-limit", "1", "--json")
	var created struct{ Job redeliver.ReplayJob }
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil || created.Job.Total != 3 {
		t.Fatalf("replay = %d %q %q", code, out, errOut)
	}
	id := created.Job.ID
	if out, _, _ := cli("replay", "status", id); strings.Contains(out, "waiting") {
		t.Fatalf("an active destination with a closed circuit waits: %q", out)
	}
	if _, err := pool.Exec(ctx, `UPDATE destination_circuits SET state = 'open', opened_at = now() WHERE destination_id = $1`, d.ID); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := cli("replay", "status", id); !strings.Contains(out, "waiting: the destination's circuit is open since") || !strings.Contains(out, "/circuit/reset") {
		t.Fatalf("open circuit: %q", out)
	}
	if _, err := svc.UpdateDestination(ctx, tenant, d.ID, resources.DestinationInput{Status: ptr("paused")}, "r"); err != nil {
		t.Fatal(err)
	}
	out, _, _ = cli("replay", "status", id, "--json")
	var st struct{ Job redeliver.ReplayJob }
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Job.Waiting == nil || !strings.Contains(*st.Job.Waiting, "destination is paused") {
		t.Fatalf("paused destination: %q", out)
	}
	out, errOut, code = cli("replay", "cancel", id, "--json")
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Job.Status != "cancelled" || st.Job.CancelledAt == nil || st.Job.Waiting != nil {
		t.Fatalf("replay cancel = %d %q %q", code, out, errOut)
	}
	if _, errOut, code := cli("replay", "cancel", id); code != 1 || !strings.Contains(errOut, "already cancelled") {
		t.Fatalf("second cancel = %d %q", code, errOut)
	}
	if _, errOut, code := cli("replay", "cancel", "0123456789abcdef0123456789abcdef"); code != 1 || !strings.Contains(errOut, "no replay job") {
		t.Fatalf("cancel of an unknown id = %d %q", code, errOut)
	}
	if _, _, code := cli("replay", "cancel"); code != 2 {
		t.Fatalf("cancel without an id = %d, want 2", code)
	}
}

// retention set changes an environment's setting (refusing a bad one),
// status lists it, run makes a pass and says what it did.
func TestRetentionCommands(t *testing.T) {
	ctx := context.Background()
	pool := commandDatabase(t)
	org, env, err := tenancy.CreateTenant(ctx, pool, "retention", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_ = org
	cli := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		code := run(ctx, args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	out, errOut, code := cli("retention", "set", "--env", env, "--days", "7", "--archive", "true", "--ingest-rate-limit", "50", "--json")
	var set struct{ Environment tenancy.Environment }
	if code != 0 || json.Unmarshal([]byte(out), &set) != nil || set.Environment.PayloadRetentionDays != 7 || set.Environment.ArchivePayloads != 1 ||
		set.Environment.IngestRateLimit == nil || *set.Environment.IngestRateLimit != 50 {
		t.Fatalf("retention set = %d %q %q", code, out, errOut)
	}
	if _, errOut, code := cli("retention", "set", "--env", env, "--days", "0.0001"); code != 1 || !strings.Contains(errOut, "payload_retention_days") {
		t.Fatalf("a retention under 60 s = %d %q", code, errOut)
	}
	if _, _, code := cli("retention", "set", "--days", "7"); code != 2 {
		t.Fatalf("set without --env = %d, want 2", code)
	}
	out, _, code = cli("retention", "status", "--json")
	var st struct {
		Environments []struct {
			EnvID            string `json:"env_id"`
			RetentionSeconds int64  `json:"retention_seconds"`
			ArchivePayloads  bool   `json:"archive_payloads"`
		} `json:"environments"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Environments) == 0 {
		t.Fatalf("retention status = %d %q", code, out)
	}
	for _, e := range st.Environments {
		if e.EnvID == env && (e.RetentionSeconds != 7*86400 || !e.ArchivePayloads) {
			t.Fatalf("status of the environment = %+v", e)
		}
	}
	// An archiving environment without an archive directory keeps its payloads, and says so.
	t.Setenv("HOOKSTREAM_ARCHIVE_DIR", "")
	out, _, code = cli("retention", "run")
	if code != 0 || !strings.Contains(out, "held: the environment archives its payloads") {
		t.Fatalf("retention run = %d %q", code, out)
	}
	if out, _, code := cli("retention", "status"); code != 0 || !strings.Contains(out, env) || !strings.Contains(out, "168h0m0s") {
		t.Fatalf("retention status table = %d %q", code, out)
	}
}

// commandDatabase is a new migrated database that the commands run in the
// test use (DATABASE_URL), and a pool on it for the test's own checks.
func commandDatabase(t *testing.T) *pgxpool.Pool {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	t.Setenv("DATABASE_URL", dbURL)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
