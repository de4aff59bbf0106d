package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// hsEnv is hs with extra environment variables.
func hsEnv(t *testing.T, bin, dbURL string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(cmd.Environ(), "DATABASE_URL="+dbURL, "HOOKSTREAM_LOG_LEVEL=warn"), env...)
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	stderr := ""
	if errors.As(err, &ee) {
		code, stderr = ee.ExitCode(), string(ee.Stderr)
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), stderr, code
}

func TestTenancyAndSecretsCommands(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hookstream")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dbURL := pgtest.NewDatabase(t)
	run := func(want int, args ...string) string {
		t.Helper()
		out, stderr, code := hs(t, bin, dbURL, args...)
		if code != want {
			t.Fatalf("hookstream %v: exit %d, want %d\n%s%s", args, code, want, out, stderr)
		}
		if want == 0 {
			return out // (stderr names the database)
		}
		return out + stderr
	}
	var org tenancy.Organization
	if err := json.Unmarshal([]byte(run(0, "orgs", "create", "--name", "Acme", "--json")), &org); err != nil || org.Environment.Slug != "production" {
		t.Fatalf("org %+v (%v)", org, err)
	}
	var env tenancy.Environment
	if err := json.Unmarshal([]byte(run(0, "envs", "create", "--org", org.ID, "--name", "Staging", "--json")), &env); err != nil || env.Slug != "staging" {
		t.Fatalf("env %+v (%v)", env, err)
	}
	if out := run(1, "envs", "create", "--org", org.ID, "--name", "Staging"); !strings.Contains(out, "Slug already exists") {
		t.Fatalf("duplicate slug: %s", out)
	}
	if out := run(0, "envs", "list", "--org", org.ID); !strings.Contains(out, "staging") || !strings.Contains(out, "production") {
		t.Fatalf("envs list: %s", out)
	}
	var live, test tenancy.CreatedKey
	_ = json.Unmarshal([]byte(run(0, "keys", "create", "--name", "a", "--org", org.ID, "--json")), &live)
	_ = json.Unmarshal([]byte(run(0, "keys", "create", "--name", "t", "--org", org.ID, "--test", "--json")), &test)
	if live.EnvID != org.Environment.ID || !strings.HasPrefix(test.Key, "hs_test_") || test.EnvID == live.EnvID || test.EnvID == env.ID {
		t.Fatalf("live %+v test %+v", live, test)
	}
	run(0, "keys", "revoke", live.ID, "--org", org.ID)
	var keys []tenancy.APIKey
	if err := json.Unmarshal([]byte(run(0, "keys", "list", "--org", org.ID, "--json")), &keys); err != nil || len(keys) != 2 {
		t.Fatalf("keys list %v (%v)", keys, err)
	}
	for _, k := range keys {
		if (k.ID == live.ID) != (k.Revoked == 1) {
			t.Errorf("key %s revoked=%d", k.ID, k.Revoked)
		}
	}
	if out := run(0, "keys", "list", "--org", org.ID); strings.Contains(out, live.Key) || strings.Contains(out, test.Key) {
		t.Fatal("keys list shows a key")
	}
	if out := run(0, "sessions", "create", "--org", org.ID, "--env", env.ID); !strings.Contains(out, "better-auth.session_token=") {
		t.Fatalf("sessions create: %s", out)
	}
	run(1, "sessions", "create", "--org", org.ID, "--env", "0123456789abcdef0123456789abcdef")
	if out := run(0, "login-link", "--org", org.ID, "--env", env.ID, "--url", "https://hooks.example.com/"); !strings.HasPrefix(out, "https://hooks.example.com/#/login?link=") ||
		!strings.Contains(out, env.ID) {
		t.Fatalf("login-link: %s", out)
	}
	var link struct {
		LoginLink tenancy.LoginLink `json:"login_link"`
		URL       string            `json:"url"`
	}
	if err := json.Unmarshal([]byte(run(0, "login-link", "--org", org.ID, "--ttl", "5m", "--json")), &link); err != nil ||
		link.LoginLink.EnvID != org.Environment.ID || !strings.HasSuffix(link.URL, "#/login?link="+link.LoginLink.Token) {
		t.Fatalf("login-link --json: %+v (%v)", link, err)
	}
	run(1, "login-link", "--org", org.ID, "--env", "0123456789abcdef0123456789abcdef")
	for _, bad := range [][]string{{"keys", "revoke"}, {"keys", "bogus"}, {"envs", "create", "--name", "x"}, {"orgs", "create"}, {"secrets"}, {"secrets", "nope"}} {
		run(2, bad...)
	}

	// Secrets: made under k1, rotated to k2, then serve refuses a keyring without k2.
	k1 := strings.TrimSpace(run(0, "secrets", "gen-key"))
	k2 := strings.TrimSpace(run(0, "secrets", "gen-key"))
	kr1, err := secretbox.ParseKeys(k1)
	if err != nil || k1 == k2 {
		t.Fatalf("gen-key gave %q, %q (%v)", k1, k2, err)
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, Secrets: kr1})
	defer svc.Close()
	tenant := domain.Tenant{OrgID: org.ID, EnvID: org.Environment.ID, Actor: "test"}
	secret := "verify-secret-long-enough"
	if _, err := svc.CreateSource(context.Background(), tenant, resources.SourceInput{Name: ptr("s"), VerificationType: ptr("hmac_sha256"), VerificationSecret: &secret}, "r"); err != nil {
		t.Fatal(err)
	}
	out, _, code := hsEnv(t, bin, dbURL, []string{"HOOKSTREAM_ENCRYPTION_KEY=" + k2 + "," + k1}, "secrets", "rotate-key")
	if code != 0 || !strings.Contains(out, "re-encrypted 1 source") {
		t.Fatalf("rotate-key: %d %s", code, out)
	}
	kr2, _ := secretbox.ParseKeys(k2)
	out, _, _ = hsEnv(t, bin, dbURL, []string{"HOOKSTREAM_ENCRYPTION_KEY=" + k2}, "secrets", "status")
	if !strings.Contains(out, "stored under "+kr2.PrimaryID()+": 1") || strings.Contains(out, kr1.PrimaryID()+":") {
		t.Fatalf("status after rotation: %s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--addr", "127.0.0.1:0")
	cmd.Env = append(cmd.Environ(), "DATABASE_URL="+dbURL, "HOOKSTREAM_ENCRYPTION_KEY="+k1)
	combined, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(combined), "does not hold") {
		t.Fatalf("serve with only the old key: %v\n%s", err, combined)
	}
}

func ptr[T any](v T) *T { return &v }

func TestWorkersOnlyProcessAnswersHealthAndNothingElse(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hookstream")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dbURL := pgtest.NewDatabase(t)
	addr := freeAddr(t)
	cmd := exec.Command(bin, "serve", "--workers", "--addr", addr)
	cmd.Env = append(cmd.Environ(), "DATABASE_URL="+dbURL, "HOOKSTREAM_LOG_LEVEL=warn")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	get := func(path string) int {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitUntil(t, 30*time.Second, "the workers' health endpoint", func() bool { return get("/v1/health") == 200 })
	if code := get("/v1/ready"); code != 200 && code != 503 {
		t.Errorf("/v1/ready = %d", code)
	}
	if code := get("/v1/sources"); code != 404 {
		t.Errorf("/v1/sources on a workers-only process = %d, want 404", code)
	}
}
