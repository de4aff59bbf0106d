package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/internal/pgtest"
)

// hs runs the hookstream binary against dbURL and returns stdout, stderr and the exit code.
func hs(t *testing.T, bin, dbURL string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cmd.Environ(), "DATABASE_URL="+dbURL)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestOperatorCommandsAgainstARunningEngine(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hookstream")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dbURL := pgtest.NewDatabase(t)
	// Per event, the idempotency keys in the order they first arrived: the
	// live delivery's, then the replay's (each delivery has its own key).
	var mu sync.Mutex
	keys := map[string][]string{}
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, k := r.Header.Get("X-hookstream-Event-Id"), r.Header.Get("Idempotency-Key")
		mu.Lock()
		defer mu.Unlock()
		for _, have := range keys[ev] {
			if have == k {
				return // the same delivery again (a request in flight at the kill)
			}
		}
		keys[ev] = append(keys[ev], k)
	}))
	defer sink.Close()
	received := func(kind string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, k := range keys {
			if (kind == "initial" && len(k) >= 1) || (kind == "replay" && len(k) >= 2) {
				n++
			}
		}
		return n
	}

	addr := freeAddr(t)
	srv, key := startServer(t, bin, dbURL, addr)
	dest := srv.post(t, key, "/v1/destinations", map[string]any{"name": "sink", "url": sink.URL, "timeout_ms": 2000})["destination"].(map[string]any)["id"].(string)
	src := srv.post(t, key, "/v1/sources", map[string]any{"name": "src"})["source"].(map[string]any)["id"].(string)
	srv.post(t, key, "/v1/connections", map[string]any{"name": "c", "source_id": src, "destination_id": dest})
	from := time.Now().UTC().Add(-time.Second)
	var events []string
	for i := 0; i < 15; i++ {
		resp, err := http.Post(srv.base+"/v1/ingest/"+src, "application/json", strings.NewReader(`{"i":1}`))
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		events = append(events, out["event_id"].(string))
	}
	to := time.Now().UTC().Add(time.Second)
	waitUntil(t, 15*time.Second, "the live deliveries", func() bool { return received("initial") == 15 })

	// projections status: every group caught up.
	waitUntil(t, 10*time.Second, "the projections to catch up", func() bool {
		out, _, code := hs(t, bin, dbURL, "projections", "status", "--json")
		var st struct {
			Groups []struct {
				Group     string `json:"group"`
				LagEvents int    `json:"lag_events"`
			} `json:"groups"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Groups) != 3 {
			t.Fatalf("projections status = %d %q", code, out)
		}
		for _, g := range st.Groups {
			if g.LagEvents != 0 {
				return false
			}
		}
		return true
	})
	if out, errOut, code := hs(t, bin, dbURL, "projections", "status"); code != 0 || !strings.Contains(out, "projector.delivery_attempts") {
		t.Errorf("projections status table = %d %q", code, out)
	} else if u, _ := url.Parse(dbURL); !strings.Contains(errOut, `"msg":"database"`) || !strings.Contains(errOut, `"name":"`+strings.TrimPrefix(u.Path, "/")+`"`) ||
		!strings.Contains(errOut, "DATABASE_URL") {
		t.Errorf("projections status does not name its database on stderr: %q", errOut)
	}
	out, errOut, code := hs(t, bin, dbURL, "projections", "rebuild", "--all")
	if code != 0 || strings.Count(out, "rebuilt ") != 4 {
		t.Errorf("projections rebuild --all = %d %q %q", code, out, errOut)
	}
	for _, args := range [][]string{{"projections", "rebuild", "nope"}, {"projections", "rebuild"}, {"projections", "frobnicate"},
		{"events", "export", "--from", to.Format(time.RFC3339), "--to", from.Format(time.RFC3339)}, {"events", "export", "--from", "soon"},
		{"events", "tail", "-n", "-1"}, {"audit", "event"}, {"replay", "--from", "x"}} {
		if _, errOut, code := hs(t, bin, dbURL, args...); code != 2 || errOut == "" {
			t.Errorf("%v = exit %d %q, want 2 with a message", args, code, errOut)
		}
	}

	// events: tail, stream, export.
	out, _, _ = hs(t, bin, dbURL, "events", "tail", "-n", "3", "--json")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !json.Valid([]byte(lines[0])) {
		t.Errorf("events tail -n 3 --json = %q", out)
	}
	if out, _, code := hs(t, bin, dbURL, "events", "stream", events[0]); code != 0 || !strings.Contains(out, "EventReceived") {
		t.Errorf("events stream = %d %q", code, out)
	}
	if _, errOut, code := hs(t, bin, dbURL, "events", "stream", "nope"); code != 1 || !strings.Contains(errOut, "no stream") {
		t.Errorf("events stream nope = %d %q", code, errOut)
	}
	db, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var total int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE recorded_at >= $1 AND recorded_at < $2`, from, to).Scan(&total); err != nil {
		t.Fatal(err)
	}
	out, _, code = hs(t, bin, dbURL, "events", "export", "--from", from.Format(time.RFC3339Nano), "--to", to.Format(time.RFC3339Nano))
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != total {
		t.Errorf("events export = exit %d, %d lines, want %d", code, len(lines), total)
	}

	// audit.
	if out, _, code := hs(t, bin, dbURL, "audit", "event", events[0]); code != 0 || !strings.Contains(out, "delivered") || !strings.Contains(out, "DeliveryAttempted") {
		t.Errorf("audit event = %d %q", code, out)
	}

	// replay from the command line, refused and accepted.
	if _, errOut, code := hs(t, bin, dbURL, "replay", "--destination", dest, "--from", from.Format(time.RFC3339Nano), "--to", to.Format(time.RFC3339Nano),
		"--rate-limit", "500"); code != 1 || !strings.Contains(errOut, "rate_limit") {
		t.Errorf("replay --rate-limit 500 = %d %q", code, errOut)
	}
	out, errOut, code = hs(t, bin, dbURL, "replay", "--destination", dest, "--from", from.Format(time.RFC3339Nano), "--to", to.Format(time.RFC3339Nano),
		"--rate-limit", "5", "--json")
	var created struct {
		Job struct {
			ID     string `json:"id"`
			Total  int    `json:"total"`
			Status string `json:"status"`
		} `json:"job"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil || created.Job.Total != 15 {
		t.Fatalf("replay = %d %q %q", code, out, errOut)
	}
	// Kill the engine once the first batch is out, start it again.
	waitUntil(t, 10*time.Second, "the first replayed deliveries", func() bool { return received("replay") >= 3 })
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = srv.cmd.Wait()
	if n := received("replay"); n >= 15 {
		t.Fatalf("the replay finished before the kill (%d): the test needs it mid-way", n)
	}
	startServer(t, bin, dbURL, addr)
	out, errOut, code = hs(t, bin, dbURL, "replay", "status", created.Job.ID, "--wait", "--json")
	if code != 0 || !strings.Contains(out, `"status":"completed"`) || !strings.Contains(out, `"processed":15`) {
		t.Errorf("replay status --wait = %d %q %q", code, out, errOut)
	}

	// send-test: a sample webhook through the running engine, its attempt printed.
	out, errOut, code = hs(t, bin, dbURL, "send-test", "--destination", dest, "--json")
	var sent struct {
		EventID         string `json:"event_id"`
		DeliveryAttempt struct {
			Status         string `json:"status"`
			ResponseStatus int    `json:"response_status"`
		} `json:"delivery_attempt"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &sent) != nil || sent.DeliveryAttempt.Status != "success" || sent.DeliveryAttempt.ResponseStatus != 200 {
		t.Errorf("send-test = %d %q %q", code, out, errOut)
	}
	if out, _, code := hs(t, bin, dbURL, "send-test", "--destination", dest, "--payload", `{"a":1}`); code != 0 || !strings.Contains(out, "success (HTTP 200") {
		t.Errorf("send-test text = %d %q", code, out)
	}
	if _, errOut, code := hs(t, bin, dbURL, "send-test", "--destination", "0123456789abcdef0123456789abcdef"); code != 1 || !strings.Contains(errOut, "Destination not found") {
		t.Errorf("send-test to an unknown destination = %d %q", code, errOut)
	}
	for _, args := range [][]string{{"send-test"}, {"send-test", "--destination", dest, "--payload", "{"}, {"send-test", "--nope"}} {
		if _, errOut, code := hs(t, bin, dbURL, args...); code != 2 || errOut == "" {
			t.Errorf("%v = exit %d %q, want 2 with a message", args, code, errOut)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ev := range events {
		if len(keys[ev]) != 2 {
			t.Errorf("event %s arrived under %d idempotency keys, want 2 (live and replay)", ev, len(keys[ev]))
		}
	}
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
