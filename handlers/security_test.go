package handlers_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/delivery"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/pgtest"
	"github.com/hookstream/hookstream/internal/secretbox"
)

func TestOutboundGuardEveryRangeAndSpelling(t *testing.T) {
	t.Parallel()
	strict := outbound.Policy{}
	refused := []string{
		"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
		"255.255.255.255", "224.0.0.1", "240.0.0.1", "198.18.0.1", "192.0.2.1",
		"::", "::1", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
		"fe80::1%eth0", "::1%lo", "2001:db8::1%1", "2606:4700::1111%eth0", // zoned: always refused
		"::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", // IPv4-mapped
		"::127.0.0.1", "::10.0.0.1", // IPv4-compatible
		"64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", // NAT64
		"2002:7f00:1::1", "2002:a9fe:a9fe::", // 6to4
		"2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
		"fec0::1",                              // site-local
		"2001:db8::1",                          // documentation
	}
	for _, a := range refused {
		if err := strict.Check(netip.MustParseAddr(a)); err == nil {
			t.Errorf("%s allowed by default", a)
		}
	}
	for _, a := range []string{"93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"} {
		if err := strict.Check(netip.MustParseAddr(a)); err != nil {
			t.Errorf("public %s refused: %v", a, err)
		}
	}
	// An operator's allowlist admits ranges, never a zone.
	lo := outbound.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fe80::/10")}}
	if lo.Check(netip.MustParseAddr("127.0.0.1")) != nil || lo.Check(netip.MustParseAddr("::ffff:127.0.0.1")) != nil {
		t.Error("allowlisted loopback refused")
	}
	if lo.Check(netip.MustParseAddr("fe80::1%eth0")) == nil || lo.Check(netip.MustParseAddr("::1%lo")) == nil {
		t.Error("a zoned address passed an allowlist")
	}
	urls := []string{
		"http://[fe80::1%25eth0]:8080/", "http://[fe80::1%eth0]/", "http://[::1%25lo]/",
		"http://2130706433/", "http://0x7f000001/", "http://0x7f.1/", "http://0177.0.0.1/", "http://127.1/",
		"http://0xa9.0xfe.0xa9.0xfe/", "http://025177524776/", "http://169.254.169.254./",
		"http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::127.0.0.1]/", "http://[64:ff9b::a9fe:a9fe]/",
		"http://[2002:a9fe:a9fe::]/", "http://[fec0::1]/", "https://user:pw@10.0.0.1:8443/x",
	}
	for _, u := range urls {
		if err := strict.CheckURL(u); err == nil {
			t.Errorf("URL %s accepted", u)
		}
	}
	for _, u := range []string{"https://example.com/hook", "http://93.184.216.34/", "https://[2606:4700::1111]/", "http://1.2.3.4.example/"} {
		if err := strict.CheckURL(u); err != nil {
			t.Errorf("URL %s refused: %v", u, err)
		}
	}
}

func TestDestinationURLsThatReachThisHostAreRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t) // loopback admitted, as in tests; everything else strict
	for _, u := range []string{"http://[fe80::1%25eth0]:8080/", "http://[::1%25lo]:80/", "http://0xa9.0xfe.0xa9.0xfe/latest",
		"http://[::ffff:a9fe:a9fe]/", "http://[64:ff9b::a9fe:a9fe]/", "http://10.0.0.1/"} {
		code, out := h.do("POST", "/v1/destinations", h.key, map[string]any{"name": "d", "url": u})
		if code != 400 || !strings.Contains(fmt.Sprint(out["error"]), "not allowed") {
			t.Errorf("POST url %s = %d %v", u, code, out)
		}
	}
	d := h.mustCreate("/v1/destinations", map[string]any{"name": "d", "url": "https://example.com/hook"})
	if code, out := h.do("PATCH", "/v1/destinations/"+d["id"].(string), h.key, map[string]any{"url": "http://[fe80::1%25eth0]/"}); code != 400 {
		t.Errorf("PATCH to a zoned URL = %d %v", code, out)
	}
}

func TestIngestNeverStoresCredentials(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	creds := map[string]string{
		"Cookie":              "better-auth.session_token=victim-session-token-0001",
		"Authorization":       "Bearer victim-bearer-0002",
		"Proxy-Authorization": "Basic dmljdGltLXByb3h5LTAwMDM=",
		"X-API-Key":           "hs_live_victimkey0004",
	}
	headers := map[string]string{"X-Shop-Topic": "orders/create"}
	for k, v := range creds {
		headers[k] = v
	}
	code, resp := h.post("/v1/ingest/"+src, `{"id":1}`, headers)
	if code != 200 {
		t.Fatalf("ingest = %d %s", code, resp)
	}
	waitFor(t, 10*time.Second, "the delivery", func() bool { return dst.count() == 1 })
	var id string
	waitFor(t, 10*time.Second, "the event listed", func() bool {
		_, list := h.do("GET", "/v1/events?source_id="+src, h.key, nil)
		if evs, _ := list["events"].([]any); len(evs) == 1 {
			id = evs[0].(map[string]any)["id"].(string)
		}
		return id != ""
	})
	_, ev := h.do("GET", "/v1/events/"+id, h.key, nil)
	shown := fmt.Sprint(ev["event"])
	if !strings.Contains(shown, "orders/create") || !strings.Contains(shown, secrets.Redacted) {
		t.Fatalf("event = %s", shown)
	}
	assertNowhere(t, h, "victim-session-token-0001", "victim-bearer-0002", "dmljdGltLXByb3h5LTAwMDM=", "hs_live_victimkey0004")
}

// assertNowhere fails when any needle appears in the event log, a read
// model, or a configuration table.
func assertNowhere(t *testing.T, h *harness, needles ...string) {
	t.Helper()
	for _, q := range []string{
		`SELECT payload::text || metadata::text FROM events`,
		`SELECT row_to_json(x)::text FROM events_view x`,
		`SELECT row_to_json(x)::text FROM delivery_attempts x`,
		`SELECT row_to_json(x)::text FROM destinations x`,
		`SELECT row_to_json(x)::text FROM sources x`,
	} {
		rows, err := h.pool.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			for _, n := range needles {
				if strings.Contains(s, n) {
					t.Errorf("%q stored in the clear: %s", n, q)
				}
			}
		}
		rows.Close()
	}
}

func TestMetricLabelsStayBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100; i++ {
		m := make([]byte, 1+rng.IntN(40))
		for j := range m {
			m[j] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[rng.IntN(26)]
		}
		req, _ := http.NewRequest(string(m), h.api.URL+"/v1/ingest/"+fmt.Sprintf("%032x", i), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	series := 0
	for name := range h.scrape() {
		if strings.HasPrefix(name, "hookstream_http_request_duration_seconds_count{") {
			series++
			if !strings.Contains(name, `method="other"`) && !strings.Contains(name, `method="GET"`) && !strings.Contains(name, `method="POST"`) &&
				!strings.Contains(name, `method="PUT"`) && !strings.Contains(name, `method="PATCH"`) && !strings.Contains(name, `method="DELETE"`) &&
				!strings.Contains(name, `method="HEAD"`) && !strings.Contains(name, `method="OPTIONS"`) {
				t.Errorf("unbounded method label: %s", name)
			}
		}
	}
	if series > 5 {
		t.Fatalf("100 random methods made %d series", series)
	}
}

func TestResponseHeadersAreCapped(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	big := strings.Repeat("x", 1000)
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 200; i++ { // 200 KB of headers
			w.Header().Set(fmt.Sprintf("X-Pad-%03d", i), big)
		}
		w.WriteHeader(200)
	}))
	t.Cleanup(huge.Close)
	src, _ := h.route(huge.URL, nil, nil)
	ev := h.ingest(src, `{}`)
	var list []map[string]any
	waitFor(t, 10*time.Second, "the attempt", func() bool {
		list = h.attempts("event_id=" + ev)
		return len(list) == 1 && list[0]["status"] != "pending"
	})
	rh := fmt.Sprint(list[0]["response_headers"])
	if list[0]["status"] != "success" || len(rh) > delivery.ResponseHeadersLimit || !strings.Contains(rh, "X-Hookstream-Headers-Truncated") {
		t.Fatalf("attempt status %v, %d bytes of headers recorded", list[0]["status"], len(rh))
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT max(octet_length(payload::text)) FROM events WHERE event_type = 'DeliveryAttempted'`).Scan(&n); err != nil || n > 2*delivery.ResponseHeadersLimit {
		t.Fatalf("DeliveryAttempted event of %d bytes (%v)", n, err)
	}
}

func TestSecretsAreEncryptedAtRestAndStillSent(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	target := strings.Replace(dst.srv.URL, "http://", "http://hookuser:url-pa55word-9@", 1) + "/hook"
	d := h.mustCreate("/v1/destinations", map[string]any{"name": "d", "url": target,
		"headers":        map[string]string{"Authorization": "Bearer dest-bearer-token-77", "X-Tenant-Token": "tenant-token-value-88", "X-Plain": "visible"},
		"signing_config": map[string]any{"secret": "signing-secret-value-99"}})
	s := h.mustCreate("/v1/sources", map[string]any{"name": "s", "verification_type": "hmac_sha256", "verification_secret": "verify-secret-value-66"})
	h.mustCreate("/v1/connections", map[string]any{"name": "c", "source_id": s["id"], "destination_id": d["id"]})
	if u := d["url"].(string); !strings.Contains(u, "****@") || strings.Contains(u, "pa55") {
		t.Fatalf("url shown as %q", u)
	}
	if hd := d["headers"].(string); strings.Contains(hd, "dest-bearer") || strings.Contains(hd, "tenant-token") || !strings.Contains(hd, "visible") {
		t.Fatalf("headers shown as %s", hd)
	}
	body := `{"order":1}`
	sig := func(b string) string {
		m := hmac.New(sha256.New, []byte("verify-secret-value-66"))
		m.Write([]byte(b))
		return hex.EncodeToString(m.Sum(nil))
	}
	if code, resp := h.post("/v1/ingest/"+s["id"].(string), body, map[string]string{"X-Signature": sig(body)}); code != 200 {
		t.Fatalf("ingest = %d %s", code, resp)
	}
	waitFor(t, 10*time.Second, "the delivery", func() bool { return dst.count() == 1 })
	check := func(n int) {
		t.Helper()
		dst.mu.Lock()
		got := dst.headers[n]
		dst.mu.Unlock()
		if got.Get("Authorization") != "Bearer dest-bearer-token-77" {
			t.Errorf("Authorization sent as %q", got.Get("Authorization"))
		}
		if got.Get("X-Tenant-Token") != "tenant-token-value-88" || got.Get("X-Plain") != "visible" || got.Get("X-hookstream-Signature") == "" {
			t.Errorf("request %d headers %v", n, got)
		}
	}
	check(0)
	// GET → PATCH of the unchanged object keeps every secret.
	_, cur := h.do("GET", "/v1/destinations/"+d["id"].(string), h.key, nil)
	obj := cur["destination"].(map[string]any)
	patch := map[string]any{"url": obj["url"], "signing_config": map[string]any{"secret": obj["signing_config"].(map[string]any)["secret"]},
		"headers": map[string]string{"Authorization": "****n-77", "X-Tenant-Token": "****e-88", "X-Plain": "visible"}, "name": "renamed"}
	if code, out := h.do("PATCH", "/v1/destinations/"+d["id"].(string), h.key, patch); code != 200 {
		t.Fatalf("PATCH unchanged = %d %v", code, out)
	}
	if code, out := h.do("PATCH", "/v1/sources/"+s["id"].(string), h.key, map[string]any{"verification_secret": "****e-66"}); code != 200 {
		t.Fatalf("PATCH source unchanged = %d %v", code, out)
	}
	if code, resp := h.post("/v1/ingest/"+s["id"].(string), body, map[string]string{"X-Signature": sig(body)}); code != 200 {
		t.Fatalf("ingest after PATCH = %d %s", code, resp)
	}
	waitFor(t, 10*time.Second, "the second delivery", func() bool { return dst.count() == 2 })
	check(1)
	// URL userinfo alone becomes the request's basic auth.
	basic := newSink(t)
	bsrc, _ := h.route(strings.Replace(basic.srv.URL, "http://", "http://hookuser:url-pa55word-9@", 1), nil, nil)
	h.ingest(bsrc, `{}`)
	waitFor(t, 10*time.Second, "the basic-auth delivery", func() bool { return basic.count() == 1 })
	basic.mu.Lock()
	user, pass, ok := (&http.Request{Header: basic.headers[0]}).BasicAuth()
	basic.mu.Unlock()
	if !ok || user != "hookuser" || pass != "url-pa55word-9" {
		t.Fatalf("basic auth sent as %q %q %v", user, pass, ok)
	}
	var list []map[string]any
	waitFor(t, 10*time.Second, "both attempts recorded", func() bool {
		list = h.attempts("destination_id=" + d["id"].(string) + "&status=success")
		return len(list) == 2
	})
	for _, a := range list {
		if rh := fmt.Sprint(a["request_headers"]); !strings.Contains(rh, secrets.Redacted) {
			t.Errorf("request_headers %s", rh)
		}
	}
	assertNowhere(t, h, "url-pa55word-9", "dest-bearer-token-77", "tenant-token-value-88", "signing-secret-value-99", "verify-secret-value-66")
}

func TestSecretsThatDoNotDecryptSendNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	a := h.mustCreate("/v1/destinations", map[string]any{"name": "a", "url": dst.srv.URL, "retry_enabled": false,
		"headers": map[string]string{"Authorization": "Bearer aaaaaaaaaaaaaaaa"}})
	b := h.mustCreate("/v1/destinations", map[string]any{"name": "b", "url": dst.srv.URL, "retry_enabled": false,
		"signing_config": map[string]any{"secret": "bbbbbbbbbbbbbbbb"}})
	// A's ciphertext moved onto B (bound to A's id), and A's signing config broken.
	if _, err := h.pool.Exec(context.Background(), `UPDATE destinations SET secrets = (SELECT secrets FROM destinations WHERE id = $1) WHERE id = $2`, a["id"], b["id"]); err != nil {
		t.Fatal(err)
	}
	var srcs []string
	for _, d := range []map[string]any{a, b} {
		s := h.mustCreate("/v1/sources", map[string]any{"name": "s"})
		h.mustCreate("/v1/connections", map[string]any{"name": "c", "source_id": s["id"], "destination_id": d["id"]})
		srcs = append(srcs, s["id"].(string))
	}
	if _, err := h.pool.Exec(context.Background(), `UPDATE destinations SET signing_config = '"garbage"' WHERE id = $1`, a["id"]); err != nil {
		t.Fatal(err)
	}
	for i, d := range []map[string]any{a, b} {
		ev := h.ingest(srcs[i], `{}`)
		var list []map[string]any
		waitFor(t, 10*time.Second, "the failed attempt", func() bool {
			list = h.attempts("event_id=" + ev)
			return len(list) == 1 && list[0]["status"] == "failed"
		})
		if msg := fmt.Sprint(list[0]["error"]); !strings.Contains(msg, "not sent") {
			t.Errorf("destination %s: error %q", d["name"], msg)
		}
	}
	if dst.count() != 0 {
		t.Fatalf("%d requests sent without their secrets", dst.count())
	}
}

func TestNoKeyRefusesSecretsButNotPlainConfig(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, Outbound: loopbackOnly})
	t.Cleanup(svc.Close)
	api := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool}))
	t.Cleanup(api.Close)
	h := &harness{t: t, pool: pool, api: api, key: newKey(t, pool, "")}
	if code, out := h.do("POST", "/v1/destinations", h.key, map[string]any{"name": "d", "url": "https://example.com/",
		"headers": map[string]string{"Authorization": "Bearer x"}}); code != 400 || !strings.Contains(fmt.Sprint(out["error"]), "encryption key") {
		t.Fatalf("secret without a key = %d %v", code, out)
	}
	if code, out := h.do("POST", "/v1/sources", h.key, map[string]any{"name": "s", "verification_type": "hmac_sha256", "verification_secret": "abc"}); code != 400 {
		t.Fatalf("verification secret without a key = %d %v", code, out)
	}
	h.mustCreate("/v1/destinations", map[string]any{"name": "plain", "url": "https://example.com/", "headers": map[string]string{"X-Plain": "1"}})
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM destinations`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d destinations stored (%v)", n, err)
	}
}

func TestPlaintextRowsAreSealedAndKeysRotate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t)
	dst := newSink(t)
	src, dest := h.route(dst.srv.URL, nil, nil)
	// Rows as a version before encryption left them.
	legacyURL := strings.Replace(dst.srv.URL, "http://", "http://old:legacy-url-secret@", 1)
	if _, err := h.pool.Exec(ctx, `UPDATE destinations SET url = $2, headers = '{"Authorization":"Bearer legacy-bearer-secret","X-Plain":"p"}',
		signing_config = '{"mode":"hmac","secret":"legacy-signing-secret","algorithm":"sha256","header":"X-hookstream-Signature","prefix":"sha256=","timestamp_header":"X-hookstream-Signature-Timestamp","rotation_grace_seconds":86400}'
		WHERE id = $1`, dest, legacyURL); err != nil {
		t.Fatal(err)
	}
	if _, err := h.pool.Exec(ctx, `UPDATE sources SET verification_secret = 'legacy-verify-secret' WHERE id = $1`, src); err != nil {
		t.Fatal(err)
	}
	rep, err := resources.SealPlaintext(ctx, h.pool, testKeyring)
	if err != nil || rep.Destinations != 1 || rep.Sources != 1 {
		t.Fatalf("seal = %+v, %v", rep, err)
	}
	if rep, err := resources.SealPlaintext(ctx, h.pool, testKeyring); err != nil || rep.Destinations+rep.Sources != 0 {
		t.Fatalf("second seal = %+v, %v", rep, err)
	}
	h.ingest(src, `{}`)
	waitFor(t, 10*time.Second, "the delivery", func() bool { return dst.count() == 1 })
	dst.mu.Lock()
	got := dst.headers[0]
	dst.mu.Unlock()
	// (An Authorization header wins over URL userinfo in Go's client.)
	if got.Get("Authorization") != "Bearer legacy-bearer-secret" {
		t.Fatalf("Authorization sent as %q", got.Get("Authorization"))
	}
	if got.Get("X-hookstream-Signature") == "" {
		t.Fatal("not signed after sealing")
	}
	for _, q := range []string{`SELECT row_to_json(x)::text FROM destinations x`, `SELECT row_to_json(x)::text FROM sources x`} {
		var all string
		if err := h.pool.QueryRow(ctx, `SELECT string_agg(t, ' ') FROM (`+q+`) r(t)`).Scan(&all); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"legacy-url-secret", "legacy-bearer-secret", "legacy-signing-secret", "legacy-verify-secret"} {
			if strings.Contains(all, n) {
				t.Errorf("%q still in the clear after sealing", n)
			}
		}
	}
	// Rotation: a new key first, the old one after it; then the new one alone.
	fresh, _ := secretbox.GenerateKey()
	both, err := secretbox.ParseKeys(fresh + ",dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktMDAwMDA=")
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := resources.RotateSecrets(ctx, h.pool, both); err != nil || rep.Destinations != 1 || rep.Sources != 1 {
		t.Fatalf("rotate = %+v, %v", rep, err)
	}
	only, _ := secretbox.ParseKeys(fresh)
	if err := resources.CheckKeys(ctx, h.pool, only); err != nil {
		t.Fatalf("after rotation the new key alone: %v", err)
	}
	if err := resources.CheckKeys(ctx, h.pool, testKeyring); err == nil {
		t.Fatal("the old key alone passed the check after rotation")
	}
}

func TestInputPostgresCannotHoldIsA400(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := newSink(t)
	src, _ := h.route(dst.srv.URL, nil, nil)
	for _, q := range []string{"/v1/events?source_id=%00", "/v1/events?method=%ff", "/v1/delivery-attempts?event_id=%c3%28",
		"/v1/connections?source_id=%00", "/v1/issues?destination_id=a%00b"} {
		code, out := h.do("GET", q, h.key, nil)
		if code != 400 || !strings.Contains(fmt.Sprint(out["error"]), "'") {
			t.Errorf("GET %s = %d %v", q, code, out)
		}
	}
	code, out := h.do("POST", "/v1/sources", h.key, `{"name":"a\u0000b"}`)
	if code != 400 || !strings.Contains(fmt.Sprint(out["error"]), "'name'") {
		t.Errorf("NUL in name = %d %v", code, out)
	}
	code, out = h.do("POST", "/v1/destinations", h.key, `{"name":"d","url":"https://example.com/","headers":{"X-A":"b\u0000"}}`)
	if code != 400 || !strings.Contains(fmt.Sprint(out["error"]), "headers") {
		t.Errorf("NUL in a header = %d %v", code, out)
	}
	// Ingest keeps such a webhook and delivers it.
	if code, resp := h.post("/v1/ingest/"+src+"?a=%00&b=%ff", `{"x":1}`, map[string]string{"X-Odd": "\xff"}); code != 200 {
		t.Fatalf("ingest with NUL in the query = %d %s", code, resp)
	}
	waitFor(t, 10*time.Second, "the delivery", func() bool { return dst.count() == 1 })
}

func TestShortSecretsAreFullyMaskedAndDedupKeysBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s := h.mustCreate("/v1/sources", map[string]any{"name": "s", "verification_type": "hmac_sha256", "verification_secret": "shh",
		"dedup_strategy": "header_field", "dedup_field": "X-Id"})
	if s["verification_secret"] != "****" {
		t.Fatalf("short secret shown as %v", s["verification_secret"])
	}
	d := newSink(t)
	src, _ := h.route(d.srv.URL, nil, nil)
	h.do("PATCH", "/v1/sources/"+src, h.key, map[string]any{"dedup_strategy": "header_field", "dedup_field": "X-Id"})
	long := strings.Repeat("k", 6000)
	for i := 0; i < 2; i++ {
		if code, resp := h.post("/v1/ingest/"+src, `{}`, map[string]string{"X-Id": long}); code != 200 {
			t.Fatalf("ingest = %d %s", code, resp)
		}
	}
	var maxLen, n int
	if err := h.pool.QueryRow(context.Background(), `SELECT max(length(key)), count(*) FROM dedup_keys`).Scan(&maxLen, &n); err != nil || n != 1 || maxLen > 200 {
		t.Fatalf("dedup keys: %d, longest %d (%v)", n, maxLen, err)
	}
}

func TestIngestLooksUpTheSourceBeforeReadingTheBody(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	body := strings.NewReader(strings.Repeat("x", 4<<20))
	req, _ := http.NewRequest("POST", h.api.URL+"/v1/ingest/0123456789abcdef0123456789abcdef", body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("unknown source with a 4 MiB body = %d %s", resp.StatusCode, raw)
	}
}

func TestMovingADestinationToAnotherHostDropsItsHiddenCredentials(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	first, second := newSink(t), newSink(t)
	d := h.mustCreate("/v1/destinations", map[string]any{"name": "d", "url": first.srv.URL,
		"headers": map[string]string{"Authorization": "Bearer hidden-token-value-1", "X-Plain": "p"}})
	s := h.mustCreate("/v1/sources", map[string]any{"name": "s"})
	h.mustCreate("/v1/connections", map[string]any{"name": "c", "source_id": s["id"], "destination_id": d["id"]})
	// Another host: the hidden header is not carried over.
	if code, out := h.do("PATCH", "/v1/destinations/"+d["id"].(string), h.key, map[string]any{"url": second.srv.URL + "/x"}); code != 200 ||
		strings.Contains(out["destination"].(map[string]any)["headers"].(string), "Authorization") {
		t.Fatalf("PATCH url = %d %v", code, out)
	}
	h.ingest(s["id"].(string), `{}`)
	waitFor(t, 10*time.Second, "the delivery", func() bool { return second.count() == 1 })
	second.mu.Lock()
	got := second.headers[0]
	second.mu.Unlock()
	if got.Get("Authorization") != "" || got.Get("X-Plain") != "p" {
		t.Fatalf("moved destination sent %v", got)
	}
	// Set again with the move, it goes along; a path change on the same host keeps it.
	if code, out := h.do("PATCH", "/v1/destinations/"+d["id"].(string), h.key, map[string]any{"url": first.srv.URL,
		"headers": map[string]string{"Authorization": "Bearer new-token-value-22"}}); code != 200 {
		t.Fatalf("PATCH url and header = %d %v", code, out)
	}
	if code, out := h.do("PATCH", "/v1/destinations/"+d["id"].(string), h.key, map[string]any{"url": first.srv.URL + "/other"}); code != 200 {
		t.Fatalf("PATCH path = %d %v", code, out)
	}
	h.ingest(s["id"].(string), `{}`)
	waitFor(t, 10*time.Second, "the second delivery", func() bool { return first.count() == 1 })
	first.mu.Lock()
	got = first.headers[0]
	first.mu.Unlock()
	if got.Get("Authorization") != "Bearer new-token-value-22" {
		t.Fatalf("Authorization sent as %q", got.Get("Authorization"))
	}
}
