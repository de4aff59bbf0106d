package handlers_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/api"
	"github.com/hookstream/hookstream/handlers/tenancy"
)

// A login link logs one browser in, once, before it expires; the session
// it makes is a user's (it may manage keys) and writes with its CSRF token.
func TestLoginLinkIsOneTime(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	org, env := h.tenant()
	acc := tenancy.NewAccounts(h.pool, nil)
	link, err := acc.CreateLoginLink(ctx, org, env, "test", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"link_token":%q}`, link.Token)
	code, out, resp := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "application/json"}, body)
	if code != 201 {
		t.Fatalf("login by link = %d %v", code, out)
	}
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == tenancy.CookieName && c.HttpOnly && c.SameSite == http.SameSiteLaxMode {
			cookie = c.Name + "=" + c.Value
		}
	}
	if cookie == "" {
		t.Fatalf("no HttpOnly SameSite=Lax session cookie in %v", resp.Header["Set-Cookie"])
	}
	if sess := out["session"].(map[string]any); sess["env_id"] != env || sess["csrf_token"] != h.csrfFor(cookie) {
		t.Fatalf("session %v", sess)
	}
	if code, out, _ := h.call("POST", "/v1/auth/api-keys", h.sessionHeaders(cookie), `{"name":"from-link"}`); code != 201 {
		t.Fatalf("a link's session creating a key = %d %v", code, out)
	}
	if code, out, _ := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "application/json"}, body); code != 401 {
		t.Fatalf("second use of a link = %d %v", code, out)
	}
	old, err := acc.CreateLoginLink(ctx, org, env, "test", time.Minute, time.Now().Add(-2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if code, out, _ := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "application/json"}, fmt.Sprintf(`{"link_token":%q}`, old.Token)); code != 401 {
		t.Fatalf("expired link = %d %v", code, out)
	}
	for _, bad := range []string{`{"link_token":"nope"}`, `{"link_token":7}`, fmt.Sprintf(`{"link_token":"x","api_key":%q}`, h.key)} {
		if code, out, _ := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "application/json"}, bad); code != 401 && code != 400 {
			t.Errorf("login %s = %d %v", bad, code, out)
		}
	}
	var n int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM login_links`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d login links left (%v): used and expired ones are deleted", n, err)
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'LoginLinkCreated'`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d LoginLinkCreated events (%v), want 2", n, err)
	}
}

// An attempt's history is its delivery's causal history, in commit order,
// for its own tenant only; the recovered filter tells open dead letters
// from those a later retry delivered.
func TestAttemptHistoryAndRecoveredDeadLetters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s := newSink(t, 500)
	src, _ := h.route(s.srv.URL, map[string]any{"retry_enabled": false}, nil)
	ev := h.ingest(src, `{"n":1}`)
	var attempt map[string]any
	waitFor(t, 20*time.Second, "the failed attempt", func() bool {
		for _, a := range h.attempts("event_id=" + ev) {
			if a["status"] == "failed" {
				attempt = a
			}
		}
		return attempt != nil
	})
	code, out := h.do("GET", "/v1/delivery-attempts/"+attempt["id"].(string)+"/history", h.key, nil)
	if code != 200 {
		t.Fatalf("history = %d %v", code, out)
	}
	hist := out["history"].(map[string]any)
	var types []string
	for _, e := range hist["events"].([]any) {
		em := e.(map[string]any)
		if em["payload"] != nil || em["summary"] == "" {
			t.Errorf("history event %v: want a summary and no payload", em)
		}
		types = append(types, em["type"].(string))
	}
	if got := strings.Join(types, ","); !strings.HasPrefix(got, "EventReceived,DeliveryRequested,DeliveryAttempted") || !strings.Contains(got, "MovedToDLQ") {
		t.Fatalf("history types %s", got)
	}
	if d := hist["deliveries"].([]any); len(d) != 1 || d[0].(map[string]any)["status"] != "dead_lettered" {
		t.Fatalf("deliveries %v", d)
	}
	other := newKey(t, h.pool, "")
	if code, out := h.do("GET", "/v1/delivery-attempts/"+attempt["id"].(string)+"/history", other, nil); code != 404 {
		t.Fatalf("another tenant's history = %d %v", code, out)
	}

	// recovered=0 keeps the dead letters not delivered since; a successful retry moves it to recovered=1.
	ids := func(q string) string {
		var out []string
		for _, a := range h.attempts(q) {
			out = append(out, a["id"].(string))
		}
		return strings.Join(out, ",")
	}
	id := attempt["id"].(string)
	if got := ids("is_dlq=1&recovered=0"); got != id {
		t.Fatalf("open dead letters %q, want %s", got, id)
	}
	if got := ids("is_dlq=1&recovered=1"); got != "" {
		t.Fatalf("recovered dead letters %q before the retry", got)
	}
	if code, out := h.do("POST", "/v1/delivery-attempts/"+id+"/retry", h.key, nil); code != 200 || out["delivery_attempt"].(map[string]any)["status"] != "success" {
		t.Fatalf("retry = %d %v", code, out)
	}
	if got := ids("is_dlq=1&recovered=0"); got != "" {
		t.Fatalf("open dead letters after a successful retry: %q", got)
	}
	if got := ids("is_dlq=1&recovered=1"); got != id {
		t.Fatalf("recovered dead letters %q, want %s", got, id)
	}
	if code, out := h.do("GET", "/v1/delivery-attempts?recovered=2", h.key, nil); code != 400 {
		t.Fatalf("recovered=2 = %d %v", code, out)
	}
}

// The live tail streams the environment's new webhooks in commit order and
// nothing of another tenant's; it resumes from Last-Event-ID, refuses a bad
// one, and bounds how many streams an environment holds.
func TestLiveTail(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s := newSink(t)
	src, _ := h.route(s.srv.URL, nil, nil)
	mine := h.key
	h.key = newKey(t, h.pool, "")
	otherSrc, _ := h.route(s.srv.URL, nil, nil)
	h.key = mine

	// A stream that never sends what is awaited fails the test within a minute instead of hanging it.
	deadline, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	open := func(lastID string) (*http.Response, *bufio.Reader) {
		req, _ := http.NewRequestWithContext(deadline, "GET", h.api.URL+"/v1/events/tail", nil)
		req.Header.Set("X-API-Key", mine)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp, bufio.NewReader(resp.Body)
	}
	// next reads the stream's next event: its id and data.
	next := func(rd *bufio.Reader) (string, map[string]any) {
		var id string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended: %v", err)
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "id: "):
				id = line[4:]
			case strings.HasPrefix(line, "data: "):
				var ev map[string]any
				if err := json.Unmarshal([]byte(line[6:]), &ev); err != nil {
					t.Fatalf("data %q: %v", line, err)
				}
				return id, ev
			}
		}
	}
	resp, rd := open("")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("tail = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if line, _ := rd.ReadString('\n'); !strings.HasPrefix(line, "retry:") {
		t.Fatalf("first line %q", line)
	}
	h.ingest(otherSrc, `{"other":1}`)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, h.ingest(src, fmt.Sprintf(`{"i":%d}`, i)))
	}
	var cursors []string
	for i := 0; i < 3; i++ {
		id, ev := next(rd)
		if ev["id"] != ids[i] || ev["source_id"] != src || ev["method"] != "POST" || ev["cursor"] != id {
			t.Fatalf("tail event %d = %v (id %s), want webhook %s of source %s", i, ev, id, ids[i], src)
		}
		cursors = append(cursors, id)
	}
	// Resuming after the first event sends the second and third again.
	_, rd2 := open(cursors[0])
	for i := 1; i < 3; i++ {
		if _, ev := next(rd2); ev["id"] != ids[i] {
			t.Fatalf("resumed event %v, want %s", ev, ids[i])
		}
	}
	// A cursor ahead of the log (forged, or from another database) starts from now rather than wait for it.
	_, rd3 := open("999999999999:0")
	ids = append(ids, h.ingest(src, `{"i":3}`))
	if _, ev := next(rd3); ev["id"] != ids[3] {
		t.Fatalf("tail from a cursor ahead of the log sent %v, want %s", ev, ids[3])
	}
	req, _ := http.NewRequest("GET", h.api.URL+"/v1/events/tail", nil)
	req.Header.Set("X-API-Key", mine)
	req.Header.Set("Last-Event-ID", "not-a-cursor")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Fatalf("bad Last-Event-ID = %v %v", resp.StatusCode, err)
	}
	for i := 3; i < api.TailMaxPerEnv; i++ {
		open("")
	}
	req, _ = http.NewRequest("GET", h.api.URL+"/v1/events/tail", nil)
	req.Header.Set("X-API-Key", mine)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("tail past the environment's limit = %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if code, _, _ := h.call("GET", "/v1/events/tail", nil, ""); code != 401 {
		t.Fatalf("tail without credentials = %d", code)
	}
}

// Behind a server with read and write timeouts (serve's are 60 s), a live
// tail and a retry that waits outlive them: the tail extends its write
// deadline per write, the retry once, and neither request's context ends
// with the read deadline.
func TestStreamsOutliveTheServersReadTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const readTimeout = 300 * time.Millisecond
	srv := httptest.NewUnstartedServer(handlers.NewAPI(handlers.APIParams{Service: h.svc, Pool: h.pool, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = readTimeout, readTimeout
	srv.Start()
	t.Cleanup(srv.Close)

	var slow atomic.Bool
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			time.Sleep(4 * readTimeout) // answers after the API's read deadline has passed
			w.WriteHeader(200)
			return
		}
		w.WriteHeader(500)
	}))
	t.Cleanup(dest.Close)
	src, _ := h.route(dest.URL, map[string]any{"retry_enabled": false, "timeout_ms": 10000}, nil)

	req, _ := http.NewRequest("GET", srv.URL+"/v1/events/tail", nil)
	req.Header.Set("X-API-Key", h.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("tail = %v %v", resp, err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	time.Sleep(3 * readTimeout) // past the read deadline, before anything is sent: what the test is about
	ev := h.ingest(src, `{"late":true}`)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("the tail ended after the server's read timeout: %v", err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, ev) {
			break
		}
	}

	var failed string
	waitFor(t, 20*time.Second, "the failed attempt", func() bool {
		for _, a := range h.attempts("event_id=" + ev) {
			if a["status"] == "failed" {
				failed = a["id"].(string)
			}
		}
		return failed != ""
	})
	slow.Store(true)
	rreq, _ := http.NewRequest("POST", srv.URL+"/v1/delivery-attempts/"+failed+"/retry", nil)
	rreq.Header.Set("X-API-Key", h.key)
	rresp, err := http.DefaultClient.Do(rreq)
	if err != nil {
		t.Fatal(err)
	}
	defer rresp.Body.Close()
	var out map[string]map[string]any
	if err := json.NewDecoder(rresp.Body).Decode(&out); err != nil || rresp.StatusCode != 200 || out["delivery_attempt"]["status"] != "success" {
		t.Fatalf("a retry waiting past the read timeout = %d %v (%v)", rresp.StatusCode, out, err)
	}
}
