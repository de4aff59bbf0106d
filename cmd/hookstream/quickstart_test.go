package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/internal/pgtest"
)

// The README's curl quickstart runs as written against a fresh engine: the
// ```sh block under "## Quickstart (curl)", with its two addresses (the API
// and the sink) replaced by the test's.
func TestReadmeQuickstartRuns(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(raw), "## Quickstart (curl)")
	if !ok {
		t.Fatal("README has no Quickstart (curl) section")
	}
	_, block, ok := strings.Cut(after, "```sh\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 || !strings.Contains(block, "127.0.0.1:8080") || !strings.Contains(block, "http://127.0.0.1:9999/hook") {
		t.Fatalf("quickstart block not found or changed shape:\n%s", block)
	}
	var hits atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer sink.Close()
	bin := buildBinary(t)
	addr := freeAddr(t)
	_, key := startServer(t, bin, pgtest.NewDatabase(t), addr)
	if key == "" {
		t.Fatal("the engine printed no API key")
	}
	script := strings.NewReplacer("127.0.0.1:8080", addr, "http://127.0.0.1:9999/hook", sink.URL+"/hook").Replace(block)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Env = append(os.Environ(), "HOOKSTREAM_API_KEY="+key)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("the quickstart did not finish:\n%s\n%s", out.String(), errOut.String())
	}
	if err != nil {
		t.Fatalf("quickstart: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	// The last answers: the retry's outcome, then the test's.
	lines := strings.Split(strings.TrimSpace(out.String()), "}{")
	text := out.String()
	if strings.Count(text, `"status":"success"`) < 3 || !strings.Contains(text, `"trigger_type":"manual"`) || !strings.Contains(text, `"delivery_attempt"`) {
		t.Fatalf("quickstart output (%d answers) lacks a successful attempt, retry and test:\n%s", len(lines), text)
	}
	if n := hits.Load(); n != 3 {
		t.Fatalf("the sink got %d requests, want 3 (the webhook, its retry, the test)", n)
	}
}
