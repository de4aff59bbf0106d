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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/internal/pgcluster"
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
	cmd := exec.Command(bin, "serve", "--addr", addr, "--allow-cidrs", "127.0.0.0/8")
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

// burstResult is what a destination saw of a burst interrupted by a signal.
type burstResult struct {
	n, received, atSignal int
	keys                  map[string]map[string]bool // event id -> idempotency keys seen
	accepted              map[string]bool
	exitErr               error
	conn                  *pgx.Conn
	// recovered is the time from the restart until every webhook had reached
	// the destination.
	recovered time.Duration
}

// burstWithSignal ingests 400 webhooks into a hookstream binary, sends it sig
// while deliveries are in flight, restarts it, and waits until every
// accepted webhook is delivered and recorded.
func burstWithSignal(t *testing.T, sig syscall.Signal) burstResult {
	bin := buildBinary(t)
	dbURL := pgtest.NewDatabase(t)

	var mu sync.Mutex
	res := burstResult{n: 400, keys: map[string]map[string]bool{}, accepted: map[string]bool{}}
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond) // keep requests in flight when the signal lands
		ev, idem := r.Header.Get("X-hookstream-Event-Id"), r.Header.Get("Idempotency-Key")
		mu.Lock()
		if res.keys[ev] == nil {
			res.keys[ev] = map[string]bool{}
		}
		res.keys[ev][idem] = true
		res.received++
		mu.Unlock()
	}))
	t.Cleanup(sink.Close)
	countDistinct := func() int { mu.Lock(); defer mu.Unlock(); return len(res.keys) }

	addr := freeAddr(t)
	srv, key := startServer(t, bin, dbURL, addr)
	if key == "" {
		t.Fatal("first start printed no API key")
	}
	dest := srv.post(t, key, "/v1/destinations", map[string]any{"name": "sink", "url": sink.URL, "timeout_ms": 2000})["destination"].(map[string]any)
	src := srv.post(t, key, "/v1/sources", map[string]any{"name": "src"})["source"].(map[string]any)
	srv.post(t, key, "/v1/connections", map[string]any{"name": "c", "source_id": src["id"], "destination_id": dest["id"]})

	res.accepted = ingestBurst(t, srv, src["id"].(string), res.n)
	if len(res.accepted) != res.n {
		t.Fatalf("%d of %d ingests accepted before the signal", len(res.accepted), res.n)
	}
	deadline := time.Now().Add(30 * time.Second)
	for countDistinct() < 40 {
		if time.Now().After(deadline) {
			t.Fatal("deliveries did not start")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := srv.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	res.exitErr = srv.cmd.Wait()
	res.atSignal = countDistinct()
	if res.atSignal >= res.n {
		t.Fatalf("every webhook was delivered before the signal (%d); the test needs a burst in flight", res.atSignal)
	}
	t.Logf("%v after %d of %d webhooks delivered", sig, res.atSignal, res.n)

	restarted := time.Now()
	startServer(t, bin, dbURL, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for countDistinct() != res.n {
		if ctx.Err() != nil {
			t.Fatalf("after restart only %d of %d webhooks reached the destination", countDistinct(), res.n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.recovered = time.Since(restarted)
	// Jobs in flight at a kill run again once their lease expires: wait until
	// none is left, so their re-deliveries are counted too.
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	res.conn = conn
	for {
		var open, recorded int
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM delivery_jobs WHERE state <> 'done'),
			(SELECT count(*) FROM delivery_attempts WHERE status = 'success')`).Scan(&open, &recorded); err != nil {
			t.Fatal(err)
		}
		if open == 0 && recorded == res.n {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after restart %d jobs still open, %d of %d successes recorded", open, recorded, res.n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	return res
}

// TestSIGKILLDuringBurstLosesNothing kills the engine with SIGKILL while
// deliveries are in flight, restarts it, and checks that every accepted
// webhook reaches the destination, duplicates only under one idempotency id.
func TestSIGKILLDuringBurstLosesNothing(t *testing.T) {
	res := burstWithSignal(t, syscall.SIGKILL)
	// The killed worker's jobs run again once their leases lapse: within the
	// default lease (10 s) of its last heartbeat, not after a destination
	// timeout plus a margin (62-69 s before heartbeats).
	t.Logf("every webhook delivered %.1f s after the restart", res.recovered.Seconds())
	if res.recovered > 20*time.Second {
		t.Errorf("the last webhooks arrived %.1f s after the restart, want within 20 s", res.recovered.Seconds())
	}
	for ev := range res.accepted {
		if len(res.keys[ev]) != 1 {
			t.Errorf("event %s arrived under %d idempotency ids, want 1", ev, len(res.keys[ev]))
		}
	}
	t.Logf("%d requests for %d webhooks (%d re-deliveries after the kill)", res.received, res.n, res.received-res.n)
}

// TestSIGTERMDuringBurstIsGraceful stops the engine with SIGTERM mid-burst:
// it exits 0 after finishing and recording the requests in flight, so after
// a restart every webhook has arrived exactly once and is recorded once.
func TestSIGTERMDuringBurstIsGraceful(t *testing.T) {
	res := burstWithSignal(t, syscall.SIGTERM)
	if res.exitErr != nil {
		t.Errorf("SIGTERM: the process exited with %v, want status 0", res.exitErr)
	}
	if res.received != res.n {
		t.Errorf("%d requests for %d webhooks: a graceful stop must send nothing twice", res.received, res.n)
	}
	var attempts, failed int
	if err := res.conn.QueryRow(context.Background(), `SELECT count(*), count(*) FILTER (WHERE status <> 'success') FROM delivery_attempts`).Scan(&attempts, &failed); err != nil {
		t.Fatal(err)
	}
	if attempts != res.n || failed != 0 {
		t.Errorf("%d attempts recorded (%d not successful) for %d webhooks, want exactly one success each", attempts, failed, res.n)
	}
}

// TestPostgresCrashDuringBurstLosesNothing crashes PostgreSQL (immediate
// shutdown: no checkpoint, the asynchronous commits not yet flushed are
// lost) while deliveries are in flight, and starts it again on the same
// port. The engine, left running, must reconnect by itself and deliver
// every accepted webhook, a re-sent one only under its one idempotency
// key, and record each delivery once.
func TestPostgresCrashDuringBurstLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own PostgreSQL cluster")
	}
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster := privateCluster(t, ctx)
	dbURL := cluster.URL("postgres")

	var mu sync.Mutex
	keys := map[string]map[string]bool{}
	requests := 0
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(150 * time.Millisecond) // keep requests in flight until PostgreSQL is down (pg_ctl takes a moment)
		ev, idem := r.Header.Get("X-hookstream-Event-Id"), r.Header.Get("Idempotency-Key")
		mu.Lock()
		requests++
		if keys[ev] == nil {
			keys[ev] = map[string]bool{}
		}
		keys[ev][idem] = true
		mu.Unlock()
	}))
	t.Cleanup(sink.Close)
	distinct := func() int { mu.Lock(); defer mu.Unlock(); return len(keys) }

	addr := freeAddr(t)
	srv, key := startServer(t, bin, dbURL, addr)
	if key == "" {
		t.Fatal("first start printed no API key")
	}
	dest := srv.post(t, key, "/v1/destinations", map[string]any{"name": "sink", "url": sink.URL, "timeout_ms": 2000})["destination"].(map[string]any)
	src := srv.post(t, key, "/v1/sources", map[string]any{"name": "src"})["source"].(map[string]any)
	srv.post(t, key, "/v1/connections", map[string]any{"name": "c", "source_id": src["id"], "destination_id": dest["id"]})
	const n = 400
	accepted := ingestBurst(t, srv, src["id"].(string), n)
	if len(accepted) != n {
		t.Fatalf("%d of %d ingests accepted before the crash", len(accepted), n)
	}
	for distinct() < 40 {
		if ctx.Err() != nil {
			t.Fatal("deliveries did not start")
		}
		time.Sleep(2 * time.Millisecond)
	}
	atStop := distinct()
	if err := cluster.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	atCrash := distinct()
	t.Logf("%d webhooks delivered when the stop began", atStop)
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	t.Logf("PostgreSQL crashed and restarted after %d of %d webhooks delivered", atCrash, n)
	if atCrash >= n {
		t.Fatal("every webhook was delivered before the crash; the test needs a burst in flight")
	}
	for distinct() != n {
		if ctx.Err() != nil {
			t.Fatalf("after the crash only %d of %d webhooks reached the destination", distinct(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("every webhook delivered %.1f s after PostgreSQL restarted", time.Since(restarted).Seconds())
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for {
		var open, recorded, attempts int
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM delivery_jobs WHERE state <> 'done'),
			(SELECT count(*) FROM delivery_attempts WHERE status = 'success'), (SELECT count(*) FROM delivery_attempts)`).Scan(&open, &recorded, &attempts); err != nil {
			t.Fatal(err)
		}
		if open == 0 && recorded == n {
			if attempts != n {
				t.Errorf("%d attempts recorded for %d webhooks, want one success each and nothing else", attempts, n)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after the crash %d jobs still open, %d of %d successes recorded", open, recorded, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d requests for %d webhooks (%d sent again after the crash)", requests, n, requests-n)
	for ev := range accepted {
		if len(keys[ev]) != 1 {
			t.Errorf("event %s arrived under %d idempotency ids, want 1", ev, len(keys[ev]))
		}
	}
	if resp, err := http.Get(srv.base + "/v1/health"); err != nil || resp.StatusCode != 200 {
		t.Errorf("the engine did not survive PostgreSQL's restart: %v", err)
	} else {
		resp.Body.Close()
	}
}

// buildBinary builds the hookstream binary into the test's temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hookstream")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// privateCluster starts a durable PostgreSQL cluster (fsync on) of the
// test's own, which it may crash and restart; it is removed at cleanup.
func privateCluster(t *testing.T, ctx context.Context) *pgcluster.Cluster {
	t.Helper()
	// The server's user must reach the data directory: not t.TempDir (0700).
	root, err := os.MkdirTemp("", "hookstream-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cluster, err := pgcluster.Open(ctx, pgcluster.Params{Dir: filepath.Join(root, "data")})
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop(context.Background(), true) })
	return cluster
}

// ingestBurst posts n webhooks to the source from 16 senders and returns
// the event ids acknowledged (200).
func ingestBurst(t *testing.T, srv *server, source string, n int) map[string]bool {
	t.Helper()
	accepted := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Go(func() {
			for i := 0; i < n/16; i++ {
				resp, err := http.Post(srv.base+"/v1/ingest/"+source, "application/json", strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
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
					mu.Lock()
					accepted[out.EventID] = true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return accepted
}
