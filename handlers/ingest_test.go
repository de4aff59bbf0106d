package handlers_test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// post sends a raw webhook with headers and returns the status and body.
func (h *harness) post(path string, body string, headers map[string]string) (int, string) {
	h.t.Helper()
	all := map[string]string{"Content-Type": "application/json"}
	for k, v := range headers {
		all[k] = v
	}
	code, raw, _ := h.send("POST", path, all, body)
	return code, string(raw)
}

func (h *harness) eventCount(query string) int {
	h.t.Helper()
	code, out := h.do("GET", "/v1/events?"+query, h.key, nil)
	if code != 200 {
		h.t.Fatalf("events = %d %v", code, out)
	}
	return num(out["pagination"].(map[string]any)["total"])
}

// An independent HMAC: the test's own, over the raw bytes it sends.
func hexHMAC(alg string, secret, body string) string {
	newHash := sha256.New
	if alg == "sha1" {
		newHash = sha1.New
	}
	m := hmac.New(newHash, []byte(secret))
	m.Write([]byte(body))
	return hex.EncodeToString(m.Sum(nil))
}

func TestIngestHMACVerification(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	code, out := h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{
		"verification_type": "hmac-sha256", "verification_secret": "s3cret-key-1234", "verification_header": "X-Shop-Signature"})
	if code != 200 {
		t.Fatalf("enable verification = %d %v", code, out)
	}
	s := out["source"].(map[string]any)
	if s["verification_type"] != "hmac_sha256" || num(s["verification_enabled"]) != 1 || s["verification_secret"] != "****1234" {
		t.Errorf("source = %v (the secret must be masked)", s)
	}
	body := `{"order":1}`
	for _, c := range []struct {
		name    string
		headers map[string]string
		code    int
	}{
		{"missing header", nil, 401},
		{"wrong signature", map[string]string{"X-Shop-Signature": "sha256=" + hexHMAC("sha256", "other", body)}, 401},
		{"signature of another body", map[string]string{"X-Shop-Signature": hexHMAC("sha256", "s3cret-key-1234", body+" ")}, 401},
	} {
		if code, resp := h.post("/v1/ingest/"+src, body, c.headers); code != c.code || !strings.Contains(resp, "signature") {
			t.Errorf("%s: %d %s", c.name, code, resp)
		}
	}
	if n := h.eventCount(""); n != 0 {
		t.Fatalf("%d events stored from refused webhooks", n)
	}
	if code, resp := h.post("/v1/ingest/"+src, body, map[string]string{"X-Shop-Signature": "sha256=" + hexHMAC("sha256", "s3cret-key-1234", body)}); code != 200 {
		t.Fatalf("valid prefixed signature = %d %s", code, resp)
	}
	if code, resp := h.post("/v1/ingest/"+src, body, map[string]string{"X-Shop-Signature": hexHMAC("sha256", "s3cret-key-1234", body)}); code != 200 {
		t.Fatalf("valid bare signature = %d %s", code, resp)
	}
	waitFor(t, 10*time.Second, "both delivered", func() bool { return dst.count() == 2 })
	waitFor(t, 5*time.Second, "two verified events listed", func() bool { return h.eventCount("verification_status=verified") == 2 })
	// sha1, hyphenated.
	h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"verification_type": "hmac-sha1"})
	if code, resp := h.post("/v1/ingest/"+src, body, map[string]string{"X-Shop-Signature": "sha1=" + hexHMAC("sha1", "s3cret-key-1234", body)}); code != 200 {
		t.Errorf("sha1 signature = %d %s", code, resp)
	}
	// Bad configuration is refused and changes nothing.
	for _, bad := range []map[string]any{{"verification_type": "md5"}, {"verification_type": "hmac_sha256", "verification_secret": ""},
		{"ip_allowlist": []string{"not-an-ip"}}, {"dedup_strategy": "body_field"}, {"dedup_window_seconds": 0}} {
		if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, bad); code != 400 {
			t.Errorf("PATCH %v = %d %v", bad, code, out)
		}
	}
	_, out = h.do("GET", "/v1/sources/"+src, h.key, nil)
	if s := out["source"].(map[string]any); s["verification_type"] != "hmac_sha1" || s["verification_secret"] != "****1234" {
		t.Errorf("source after refused updates = %v", s)
	}
}

func TestIngestStandardWebhooksVerification(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	key := []byte("a 24-byte test key......")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"verification_type": "standard_webhooks", "verification_secret": secret}); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	body := `{"type":"user.created"}`
	sign := func(id string, ts int64, k []byte) string {
		m := hmac.New(sha256.New, k)
		fmt.Fprintf(m, "%s.%d.%s", id, ts, body)
		return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	}
	now := time.Now().Unix()
	for _, c := range []struct {
		name string
		ts   int64
		sig  string
		code int
	}{
		{"valid", now, sign("msg_1", now, key), 200},
		{"valid among others", now, "v1,bm9wZQ== " + sign("msg_1", now, key), 200},
		{"wrong key", now, sign("msg_1", now, []byte("another key")), 401},
		{"stale timestamp", now - 600, sign("msg_1", now-600, key), 401},
	} {
		code, resp := h.post("/v1/ingest/"+src, body, map[string]string{"webhook-id": "msg_1", "webhook-timestamp": strconv.FormatInt(c.ts, 10), "webhook-signature": c.sig})
		if code != c.code {
			t.Errorf("%s: %d %s", c.name, code, resp)
		}
	}
	waitFor(t, 10*time.Second, "the valid webhooks delivered", func() bool { return dst.count() == 2 })
}

func TestIngestIPListsComeFirst(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	for _, c := range []struct {
		patch map[string]any
		code  int
		msg   string
	}{
		{map[string]any{"ip_denylist": []string{"10.0.0.0/8", "127.0.0.1"}}, 403, "IP is in deny list"},
		{map[string]any{"ip_denylist": []string{}, "ip_allowlist": []string{"10.0.0.0/8", "2001:db8::/32"}}, 403, "IP is not in allow list"},
		// The IP check runs before the signature check.
		{map[string]any{"verification_type": "hmac_sha256", "verification_secret": "k"}, 403, "IP is not in allow list"},
		{map[string]any{"ip_allowlist": []string{"127.0.0.0/8", "::1"}}, 401, "signature"},
		{map[string]any{"verification_type": ""}, 200, "event_id"},
	} {
		if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, c.patch); code != 200 {
			t.Fatalf("PATCH %v = %d %v", c.patch, code, out)
		}
		if code, resp := h.post("/v1/ingest/"+src, `{}`, nil); code != c.code || !strings.Contains(resp, c.msg) {
			t.Errorf("after %v: %d %s, want %d %q", c.patch, code, resp, c.code, c.msg)
		}
	}
	_, out := h.do("GET", "/v1/sources/"+src, h.key, nil)
	if s := out["source"].(map[string]any); s["ip_allowlist"] != `["127.0.0.0/8","::1"]` {
		t.Errorf("ip_allowlist = %v", s["ip_allowlist"])
	}
	waitFor(t, 10*time.Second, "the admitted webhook", func() bool { return dst.count() == 1 })
	h.quiet(10 * time.Second)
	if n := h.eventCount(""); n != 1 {
		t.Errorf("%d events stored, want only the admitted one", n)
	}
}

func TestIngestDedup(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	for _, c := range []struct {
		name   string
		patch  map[string]any
		send   func(i int) (string, map[string]string)
		unique int // of 4 sent
	}{
		{"payload_hash", map[string]any{"dedup_enabled": true, "dedup_strategy": "payload_hash"},
			func(i int) (string, map[string]string) { return fmt.Sprintf(`{"n":%d}`, i%2), nil }, 2},
		{"header_field", map[string]any{"dedup_strategy": "header_field", "dedup_field": "X-Delivery-Id"},
			func(i int) (string, map[string]string) {
				return fmt.Sprintf(`{"i":%d}`, i), map[string]string{"X-Delivery-Id": "hdr-" + strconv.Itoa(i/3)}
			}, 2},
		{"body_field", map[string]any{"dedup_strategy": "body_field", "dedup_field": "data.id"},
			func(i int) (string, map[string]string) {
				return fmt.Sprintf(`{"data":{"id":"obj_%d"},"i":%d}`, i/4, i), nil
			}, 1},
	} {
		if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, c.patch); code != 200 {
			t.Fatalf("%s: PATCH = %d %v", c.name, code, out)
		}
		before := dst.count()
		dupsBefore := h.eventCount("dedup_status=duplicate")
		dups := 0
		uniques := map[string]bool{}
		for i := 0; i < 4; i++ {
			body, hdr := c.send(i)
			code, resp := h.post("/v1/ingest/"+src, body, hdr)
			if code != 200 {
				t.Fatalf("%s: duplicate answered %d %s, want 200", c.name, code, resp)
			}
			var answer struct {
				EventID         string `json:"event_id"`
				Duplicate       bool   `json:"duplicate"`
				OriginalEventID string `json:"original_event_id"`
			}
			if err := json.Unmarshal([]byte(resp), &answer); err != nil {
				t.Fatal(err)
			}
			if !answer.Duplicate {
				uniques[answer.EventID] = true
				if answer.OriginalEventID != "" {
					t.Errorf("%s: a unique webhook answered original_event_id %q", c.name, answer.OriginalEventID)
				}
				continue
			}
			dups++
			if !uniques[answer.OriginalEventID] {
				t.Errorf("%s: a duplicate's original_event_id %q is none of the webhooks accepted before it %v", c.name, answer.OriginalEventID, uniques)
			}
		}
		if dups != 4-c.unique {
			t.Errorf("%s: %d answers said duplicate, want %d", c.name, dups, 4-c.unique)
		}
		waitFor(t, 10*time.Second, c.name+": the unique webhooks delivered", func() bool { return dst.count() == before+c.unique })
		waitFor(t, 5*time.Second, c.name+": the duplicates listed", func() bool {
			return h.eventCount("dedup_status=duplicate") == dupsBefore+4-c.unique
		})
	}
	// Duplicates are stored but never delivered.
	h.quiet(10 * time.Second)
	if dst.count() != 5 {
		t.Errorf("destination received %d, want 5", dst.count())
	}
	code, out := h.do("GET", "/v1/events?dedup_status=duplicate&limit=1", h.key, nil)
	if ev := out["events"].([]any)[0].(map[string]any); code != 200 || ev["status"] != "received" || ev["dedup_hash"] == nil {
		t.Errorf("duplicate event = %v", ev)
	}
}

func TestIngestToADisabledSourceIsAConflictAndStoresNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	if code, out := h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"status": "disabled"}); code != 200 {
		t.Fatalf("disable source = %d %v", code, out)
	}
	code, resp := h.post("/v1/ingest/"+src, `{"order":1}`, nil)
	var body struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(resp), &body); err != nil || code != 409 || body.Error != "Source is disabled" {
		t.Fatalf("ingest to a disabled source = %d %s", code, resp)
	}
	if n := h.eventCount(""); n != 0 {
		t.Fatalf("%d events stored for a disabled source", n)
	}
}

// The event detail's headers, query and body come from the log (the read
// model keeps only the summary), exactly as ingested.
func TestEventDetailShowsTheRequestAsIngested(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	code, resp := h.post("/v1/ingest/"+src+"?shop=acme&shop=beta", `{"order":7}`, map[string]string{"X-Shop-Topic": "orders/create"})
	if code != 200 {
		t.Fatalf("ingest = %d %s", code, resp)
	}
	var res struct {
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal([]byte(resp), &res); err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	waitFor(t, 10*time.Second, "the event listed", func() bool {
		code, out := h.do("GET", "/v1/events/"+res.EventID, h.key, nil)
		if code == 200 {
			ev = out["event"].(map[string]any)
		}
		return code == 200
	})
	headers, _ := json.Marshal(ev["headers"])
	query, _ := json.Marshal(ev["query_params"])
	payload, _ := json.Marshal(ev["payload"])
	if !strings.Contains(string(headers), "orders/create") || string(query) != `{"shop":["acme","beta"]}` ||
		string(payload) != `{"order":7}` || ev["payload_inline"] != `{"order":7}` {
		t.Fatalf("event = headers %s query %s payload %s inline %v", headers, query, payload, ev["payload_inline"])
	}
}

// Ingest keeps the query string and the headers byte for byte: the query
// as sent (encoding, order, repeats, %00 and %ff included), and the exact
// bytes of header values text cannot hold (shown with U+FFFD in headers).
func TestIngestKeepsQueryAndHeadersByteExact(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	const rawQuery = "a=%00&b=%ff&a=2&c=%E2%9C%93&d"
	req, _ := http.NewRequest("POST", h.api.URL+"/v1/ingest/"+src+"?"+rawQuery, strings.NewReader(`{"exact":true}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Bin", "\xff\xfeok")
	req.Header.Add("X-Bin", "plain")
	req.Header.Set("X-Text", "fine")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("ingest = %d %v", resp.StatusCode, out)
	}
	ev := out["event_id"].(string)
	var got map[string]any
	waitFor(t, 10*time.Second, "the event listed", func() bool {
		var code int
		code, got = h.do("GET", "/v1/events/"+ev, h.key, nil)
		return code == 200
	})
	e := got["event"].(map[string]any)
	if e["raw_query"] != rawQuery {
		t.Errorf("raw_query = %q, want %q", e["raw_query"], rawQuery)
	}
	exact, _ := e["headers_b64"].(map[string]any)
	values, _ := exact["X-Bin"].([]any)
	if len(values) != 2 {
		t.Fatalf("headers_b64 = %v, want X-Bin's two values", e["headers_b64"])
	}
	for i, want := range []string{"\xff\xfeok", "plain"} {
		raw, err := base64.StdEncoding.DecodeString(values[i].(string))
		if err != nil || string(raw) != want {
			t.Errorf("X-Bin value %d = %q (%v), want %q", i, raw, err, want)
		}
	}
	if _, ok := exact["X-Text"]; ok {
		t.Errorf("a header text can hold is in headers_b64 too: %v", exact)
	}
	if shown := e["headers"].(map[string]any)["X-Bin"].([]any)[0]; shown != "\uFFFDok" {
		t.Errorf("headers shows X-Bin as %q", shown)
	}
	waitFor(t, 10*time.Second, "the delivery", func() bool { return dst.count() == 1 })
	if dst.bodies[0] != `{"exact":true}` {
		t.Errorf("delivered body %q", dst.bodies[0])
	}

	// A query with a raw byte text cannot hold (Go's server accepts 0xff
	// unencoded) is kept as its bytes, in base64.
	c, err := net.Dial("tcp", strings.TrimPrefix(h.api.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/ingest/%s?a=\xffb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", src)
	raw, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	var second map[string]any
	_ = json.NewDecoder(raw.Body).Decode(&second)
	raw.Body.Close()
	if raw.StatusCode != 200 {
		t.Fatalf("raw ingest = %d %v", raw.StatusCode, second)
	}
	waitFor(t, 10*time.Second, "the second event listed", func() bool {
		var code int
		code, got = h.do("GET", "/v1/events/"+second["event_id"].(string), h.key, nil)
		return code == 200
	})
	e = got["event"].(map[string]any)
	if b, _ := e["raw_query_b64"].(string); e["raw_query"] != nil || b != base64.StdEncoding.EncodeToString([]byte("a=\xffb")) {
		t.Errorf("raw_query %v, raw_query_b64 %v: want null and the bytes a=\\xffb", e["raw_query"], e["raw_query_b64"])
	}
}
