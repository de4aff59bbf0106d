package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/internal/pgtest"
)

// server is a hookstream binary running as a child process.
type server struct {
	cmd  *exec.Cmd
	base string
	out  *bufio.Scanner
}

func startServer(t *testing.T, bin, dbURL, addr string) (*server, string) {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--addr", addr, "--allow-cidrs", "127.0.0.0/8", "--lease-margin", "1s")
	cmd.Env = append(cmd.Environ(), "DATABASE_URL="+dbURL, "HOOKSTREAM_LOG_LEVEL=warn")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	s := &server{cmd: cmd, base: "http://" + addr, out: bufio.NewScanner(stdout)}
	key := ""
	for s.out.Scan() {
		line := s.out.Text()
		if k, ok := strings.CutPrefix(strings.TrimSpace(line), "export HOOKSTREAM_API_KEY="); ok {
			key = k
		}
		if strings.Contains(line, "listening on") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return s, key
}

func (s *server) post(t *testing.T, key, path string, body any) map[string]any {
	t.Helper()
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", s.base+path, bytes.NewReader(raw))
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode >= 300 {
		t.Fatalf("POST %s = %d %v", path, resp.StatusCode, out)
	}
	return out
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestSIGKILLDuringBurstLosesNothing kills the engine with SIGKILL while
// deliveries are in flight, restarts it, and checks that every accepted
// webhook reaches the destination, duplicates only under one idempotency id.
func TestSIGKILLDuringBurstLosesNothing(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hookstream")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dbURL := pgtest.NewDatabase(t)

	var mu sync.Mutex
	keys := map[string]map[string]bool{} // event id -> idempotency keys seen
	received := 0
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond) // keep requests in flight when the kill lands
		ev, idem := r.Header.Get("X-hookstream-Event-Id"), r.Header.Get("Idempotency-Key")
		mu.Lock()
		if keys[ev] == nil {
			keys[ev] = map[string]bool{}
		}
		keys[ev][idem] = true
		received++
		mu.Unlock()
	}))
	defer sink.Close()
	countDistinct := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(keys), received }

	addr := freeAddr(t)
	srv, key := startServer(t, bin, dbURL, addr)
	if key == "" {
		t.Fatal("first start printed no API key")
	}
	dest := srv.post(t, key, "/v1/destinations", map[string]any{"name": "sink", "url": sink.URL, "timeout_ms": 2000})["destination"].(map[string]any)
	src := srv.post(t, key, "/v1/sources", map[string]any{"name": "src"})["source"].(map[string]any)
	srv.post(t, key, "/v1/connections", map[string]any{"name": "c", "source_id": src["id"], "destination_id": dest["id"]})

	const n = 400
	accepted := make(map[string]bool, n)
	var amu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n/16; i++ {
				resp, err := http.Post(srv.base+"/v1/ingest/"+src["id"].(string), "application/json", strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
				if err != nil {
					t.Error(err)
					return
				}
				var out struct {
					EventID string `json:"event_id"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					amu.Lock()
					accepted[out.EventID] = true
					amu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(accepted) != n {
		t.Fatalf("%d of %d ingests accepted before the kill", len(accepted), n)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if d, _ := countDistinct(); d >= 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("deliveries did not start")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = srv.cmd.Wait()
	atKill, _ := countDistinct()
	if atKill >= n {
		t.Fatalf("every webhook was delivered before the kill (%d); the test needs a burst in flight", atKill)
	}
	t.Logf("killed after %d of %d webhooks delivered", atKill, n)

	startServer(t, bin, dbURL, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if d, _ := countDistinct(); d == n {
			break
		}
		if ctx.Err() != nil {
			d, _ := countDistinct()
			t.Fatalf("after restart only %d of %d webhooks reached the destination", d, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Jobs that were in flight at the kill run again once their lease expires:
	// wait until none is left, so their re-deliveries are counted too.
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for {
		var open, recorded int
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM delivery_jobs WHERE state <> 'done'),
			(SELECT count(*) FROM delivery_attempts WHERE status = 'success')`).Scan(&open, &recorded); err != nil {
			t.Fatal(err)
		}
		if open == 0 && recorded == n {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after restart %d jobs still open, %d of %d successes recorded", open, recorded, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for ev := range accepted {
		if len(keys[ev]) != 1 {
			t.Errorf("event %s arrived under %d idempotency ids, want 1", ev, len(keys[ev]))
		}
	}
	t.Logf("%d requests for %d webhooks (%d re-deliveries after the kill)", received, n, received-n)
}
