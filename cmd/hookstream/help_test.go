package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// Every command answers -h and --help with its usage on stdout and status
// 0; a flag it does not know is status 2 with the usage on stderr.
func TestHelpAndBadArgumentsExitCodes(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?connect_timeout=1") // help must not need a database
	ctx := context.Background()
	for _, cmd := range [][]string{{"serve"}, {"migrate"}, {"keys"}, {"audit"}, {"events"}, {"replay"}, {"projections"}, {"orgs"}, {"envs"}, {"secrets"}} {
		for _, flag := range []string{"-h", "--help"} {
			var out, errOut bytes.Buffer
			args := append(append([]string(nil), cmd...), flag)
			if code := run(ctx, args, &out, &errOut); code != 0 {
				t.Errorf("%v: exit %d, want 0 (stderr %q)", args, code, errOut.String())
			}
			if !strings.Contains(strings.ToLower(out.String()), "usage") {
				t.Errorf("%v: stdout %q has no usage", args, out.String())
			}
		}
	}
	for _, args := range [][]string{{"serve", "--no-such-flag"}, {"serve", "stray"}, {"audit", "--no-such-flag"}, {"events", "tail", "--no-such-flag"},
		{"keys", "list", "--no-such-flag"}, {"migrate", "--no-such-flag"}, {"replay", "--no-such-flag"}, {"nope"},
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

// A replay whose deliveries wait says why: its destination is paused or its
// circuit open, with what to do about it.
func TestReplayHoldSaysWhyDeliveriesWait(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool})
	defer svc.Close()
	tenant := domain.Tenant{OrgID: "0123456789abcdef0123456789abcdef", EnvID: "fedcba9876543210fedcba9876543210", Actor: "test"}
	d, err := svc.CreateDestination(ctx, tenant, resources.DestinationInput{Name: ptr("d"), URL: ptr("https://example.com/hook")}, "r")
	if err != nil {
		t.Fatal(err)
	}
	if hold := replayHold(ctx, svc, tenant, d.ID); hold != "" {
		t.Fatalf("an active destination with a closed circuit holds: %q", hold)
	}
	if _, err := pool.Exec(ctx, `UPDATE destination_circuits SET state = 'open', opened_at = now() WHERE destination_id = $1`, d.ID); err != nil {
		t.Fatal(err)
	}
	if hold := replayHold(ctx, svc, tenant, d.ID); !strings.Contains(hold, "circuit is open") || !strings.Contains(hold, "/circuit/reset") {
		t.Fatalf("open circuit: hold %q", hold)
	}
	if _, err := pool.Exec(ctx, `UPDATE destinations SET status = 'paused' WHERE id = $1`, d.ID); err != nil {
		t.Fatal(err)
	}
	if hold := replayHold(ctx, svc, tenant, d.ID); !strings.Contains(hold, "destination is paused") {
		t.Fatalf("paused destination: hold %q", hold)
	}
}
