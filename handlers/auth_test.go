package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/pgtest"
)

// call sends a request with the given headers (a cookie among them) and
// returns the status, the decoded body and the response.
func (h *harness) call(method, path string, headers map[string]string, body string) (int, map[string]any, *http.Response) {
	h.t.Helper()
	code, raw, resp := h.send(method, path, headers, body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return code, out, resp
}

// send sends a request with the given headers and returns the status, the
// raw body and the response.
func (h *harness) send(method, path string, headers map[string]string, body string) (int, []byte, *http.Response) {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, h.api.URL+path, rd)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, resp
}

// login exchanges the harness key for a session and returns its Cookie header.
func (h *harness) login(key string) string {
	h.t.Helper()
	code, out, resp := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "application/json"}, fmt.Sprintf(`{"api_key":%q}`, key))
	if code != 201 {
		h.t.Fatalf("login = %d %v", code, out)
	}
	for _, c := range resp.Cookies() {
		if c.Name == "better-auth.session_token" {
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.MaxAge <= 0 {
				h.t.Errorf("session cookie attributes: %+v", c)
			}
			return c.Name + "=" + c.Value
		}
	}
	h.t.Fatal("login set no session cookie")
	return ""
}

// csrfFor reads a session's CSRF token as the dashboard does (GET /v1/auth/session).
func (h *harness) csrfFor(cookie string) string {
	h.t.Helper()
	code, out, _ := h.call("GET", "/v1/auth/session", map[string]string{"Cookie": cookie}, "")
	tok, _ := out["csrf_token"].(string)
	if code != 200 || tok == "" {
		h.t.Fatalf("GET /v1/auth/session = %d %v", code, out)
	}
	return tok
}

// sessionHeaders are the headers of a session's JSON write: cookie, CSRF token, body type.
func (h *harness) sessionHeaders(cookie string) map[string]string {
	return map[string]string{"Cookie": cookie, "Content-Type": "application/json", "X-CSRF-Token": h.csrfFor(cookie)}
}

// tenant is the organization and environment of the harness key.
func (h *harness) tenant() (org, env string) {
	h.t.Helper()
	if err := h.pool.QueryRow(context.Background(), `SELECT org_id, env_id FROM api_keys WHERE key_prefix = $1`, h.key[:12]).Scan(&org, &env); err != nil {
		h.t.Fatal(err)
	}
	return org, env
}

// userSession makes a session as the CLI does (not from a key) for the
// harness key's environment and returns its Cookie header.
func (h *harness) userSession() string {
	h.t.Helper()
	ctx := context.Background()
	org, env := h.tenant()
	s, err := tenancy.NewAccounts(h.pool, nil).CreateSession(ctx, org, env, "", "cli", time.Hour, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return tenancy.SessionCookie(nil, s.Token)
}

func TestSessionsLoginUseAndLogout(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	cookie := h.login(h.key)
	if code, out, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": cookie}, ""); code != 200 {
		t.Fatalf("GET with the session = %d %v", code, out)
	}
	jsonHdr := h.sessionHeaders(cookie)
	tok := jsonHdr["X-CSRF-Token"]
	// CSRF: a session write needs the session's token, a JSON body type and no foreign Origin.
	for _, hd := range []map[string]string{
		{"Cookie": cookie, "Content-Type": "application/json"},
		{"Cookie": cookie, "Content-Type": "application/json", "X-CSRF-Token": strings.ToUpper(tok[:1]) + strings.ToLower(tok[:1]) + tok[1:]},
		{"Cookie": cookie, "Content-Type": "application/json", "X-CSRF-Token": h.csrfFor(h.login(h.key))}, // another session's
		{"Cookie": cookie, "Content-Type": "text/plain", "X-CSRF-Token": tok},
		{"Cookie": cookie, "X-CSRF-Token": tok},
		{"Cookie": cookie, "Content-Type": "application/json", "X-CSRF-Token": tok, "Origin": "https://evil.example"},
		{"Cookie": cookie, "Content-Type": "application/json", "X-CSRF-Token": tok, "Sec-Fetch-Site": "cross-site"},
	} {
		if code, out, _ := h.call("POST", "/v1/sources", hd, `{"name":"csrf"}`); code != 403 {
			t.Errorf("session write with %v = %d %v", hd, code, out)
		}
	}
	if code, out, _ := h.call("POST", "/v1/sources", jsonHdr, `{"name":"ok"}`); code != 201 {
		t.Fatalf("session write = %d %v", code, out)
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM sources WHERE name = 'csrf'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d sources stored by refused writes (%v)", n, err)
	}
	if code, out, _ := h.call("POST", "/v1/auth/logout", jsonHdr, ""); code != 200 {
		t.Fatalf("logout = %d %v", code, out)
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": cookie}, ""); code != 401 {
		t.Fatalf("session after logout = %d", code)
	}
	// Expiry.
	cookie = h.login(h.key)
	if _, err := h.pool.Exec(context.Background(), `UPDATE sessions SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": cookie}, ""); code != 401 {
		t.Fatalf("expired session = %d", code)
	}
	if code, _, _ := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "application/json"}, `{"api_key":"hs_live_nope"}`); code != 401 {
		t.Fatalf("login with a bad key = %d", code)
	}
	if code, _, _ := h.call("POST", "/v1/auth/login", map[string]string{"Content-Type": "text/plain"}, fmt.Sprintf(`{"api_key":%q}`, h.key)); code != 403 {
		t.Fatalf("login from a form = %d", code)
	}
	// With the key in a header the body is optional, and held to the rules when sent.
	withHeader := map[string]string{"X-API-Key": h.key, "Content-Type": "application/json"}
	if code, out, _ := h.call("POST", "/v1/auth/login", withHeader, ""); code != 201 {
		t.Fatalf("login with the key in a header = %d %v", code, out)
	}
	for _, body := range []string{`{"name":"x"}`, `{"api_key":"hs_live_other"}`, `{`} {
		if code, out, _ := h.call("POST", "/v1/auth/login", withHeader, body); code != 400 {
			t.Errorf("login with a header key and body %s = %d %v, want 400", body, code, out)
		}
	}
}

func TestAPIKeysAreManagedFromASessionAndRevokedAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if code, out, _ := h.call("POST", "/v1/auth/api-keys", map[string]string{"X-API-Key": h.key, "Content-Type": "application/json"}, `{"name":"x"}`); code != 403 {
		t.Fatalf("key creation with a key = %d %v", code, out)
	}
	// A session made from a key may do what the key may: not mint keys.
	fromKey := h.sessionHeaders(h.login(h.key))
	if code, out, _ := h.call("POST", "/v1/auth/api-keys", fromKey, `{"name":"x"}`); code != 403 {
		t.Fatalf("key creation from a key's session = %d %v", code, out)
	}
	sess := h.sessionHeaders(h.userSession())
	code, out, _ := h.call("POST", "/v1/auth/api-keys", sess, `{"name":"ci","scopes":"*"}`)
	if code != 201 {
		t.Fatalf("create key = %d %v", code, out)
	}
	created := out["api_key"].(map[string]any)
	minted := created["key"].(string)
	if !strings.HasPrefix(minted, "hs_live_") || created["key_prefix"] != minted[:12] {
		t.Fatalf("created %v", created)
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"X-API-Key": minted}, ""); code != 200 {
		t.Fatalf("new key = %d", code)
	}
	// Used keys show when they were last used, without a write per request.
	var used *time.Time
	var count int64
	if err := h.pool.QueryRow(context.Background(), `SELECT last_used_at, request_count FROM api_keys WHERE id = $1`, created["id"]).Scan(&used, &count); err != nil || used == nil || count != 1 {
		t.Fatalf("last_used_at %v, request_count %d (%v)", used, count, err)
	}
	_, list, _ := h.call("GET", "/v1/auth/api-keys", map[string]string{"X-API-Key": minted}, "")
	found := false
	for _, k := range list["api_keys"].([]any) {
		km := k.(map[string]any)
		if _, shown := km["key"]; shown {
			t.Errorf("list shows a key: %v", km)
		}
		if km["id"] == created["id"] {
			found = num(km["revoked"]) == 0 && km["last_used_at"] != nil
		}
	}
	if !found {
		t.Fatalf("list = %v", list)
	}
	// A session made from the key dies with it.
	keyCookie := h.login(minted)
	if code, out, _ := h.call("DELETE", "/v1/auth/api-keys/"+created["id"].(string), sess, ""); code != 200 {
		t.Fatalf("revoke = %d %v", code, out)
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"X-API-Key": minted}, ""); code != 401 {
		t.Fatalf("revoked key = %d", code)
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": keyCookie}, ""); code != 401 {
		t.Fatalf("session of a revoked key = %d", code)
	}
	// Another tenant's key id is not found.
	other := newKey(t, h.pool, "")
	_, mine, _ := h.call("GET", "/v1/auth/api-keys", map[string]string{"X-API-Key": other}, "")
	otherID := mine["api_keys"].([]any)[0].(map[string]any)["id"].(string)
	if code, _, _ := h.call("DELETE", "/v1/auth/api-keys/"+otherID, sess, ""); code != 404 {
		t.Fatalf("revoke another tenant's key = %d", code)
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"X-API-Key": other}, ""); code != 200 {
		t.Fatal("another tenant's key was revoked")
	}
}

func TestEnvironmentsScopeKeysAndResources(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sess := h.sessionHeaders(h.userSession())
	code, out, _ := h.call("POST", "/v1/environments", sess, `{"name":"Staging","slug":"staging"}`)
	if code != 201 {
		t.Fatalf("create env = %d %v", code, out)
	}
	env := out["environment"].(map[string]any)
	if code, out, _ := h.call("POST", "/v1/environments", sess, `{"name":"Again","slug":"staging"}`); code != 409 {
		t.Fatalf("duplicate slug = %d %v", code, out)
	}
	if code, out, _ := h.call("PATCH", "/v1/environments/"+env["id"].(string), sess, `{"name":"Stage"}`); code != 200 || out["environment"].(map[string]any)["name"] != "Stage" {
		t.Fatalf("rename env = %d %v", code, out)
	}
	_, envs, _ := h.call("GET", "/v1/environments", map[string]string{"X-API-Key": h.key}, "")
	if len(envs["environments"].([]any)) != 2 {
		t.Fatalf("environments = %v", envs)
	}
	code, out, _ = h.call("POST", "/v1/auth/api-keys", sess, fmt.Sprintf(`{"name":"staging","env_id":%q}`, env["id"]))
	if code != 201 {
		t.Fatalf("key for staging = %d %v", code, out)
	}
	stagingKey := out["api_key"].(map[string]any)["key"].(string)
	if code, _, _ := h.call("POST", "/v1/sources", map[string]string{"X-API-Key": stagingKey, "Content-Type": "application/json"}, `{"name":"in-staging"}`); code != 201 {
		t.Fatal("staging source not created")
	}
	_, prod, _ := h.call("GET", "/v1/sources", map[string]string{"X-API-Key": h.key}, "")
	if strings.Contains(fmt.Sprint(prod), "in-staging") {
		t.Fatal("a staging source is visible from production")
	}
	other := newKey(t, h.pool, "")
	if code, _, _ := h.call("GET", "/v1/environments/"+env["id"].(string), map[string]string{"X-API-Key": other}, ""); code != 404 {
		t.Fatalf("another org's environment = %d", code)
	}
	if code, _, _ := h.call("POST", "/v1/auth/api-keys", sess, `{"name":"x","env_id":"0123456789abcdef0123456789abcdef"}`); code != 404 {
		t.Fatalf("key for an unknown env = %d", code)
	}
	// hs_test_ keys land in the organization's test environment.
	org, prodEnv := h.tenant()
	k, err := tenancy.CreateAPIKey(context.Background(), h.pool, nil, tenancy.KeyParams{Name: "t", OrgID: org, Test: true}, time.Now())
	if err != nil || !strings.HasPrefix(k.Key, "hs_test_") || k.EnvID == prodEnv {
		t.Fatalf("test key %+v, %v", k, err)
	}
}

func TestSignedSessionCookieIsBetterAuthsFormat(t *testing.T) {
	t.Parallel()
	// Computed with Better Auth 1.7's cookie signer (issue 16's test vector).
	got := tenancy.SessionCookie([]byte("hookstream-test-secret-0123456789abcdef"), "AbCdEf0123456789AbCdEf0123456789")
	want := "better-auth.session_token=AbCdEf0123456789AbCdEf0123456789.%2FlEHF6gE2svC0FlbdVW7MSzhISuv0j65bEt%2FhIAdfTI%3D"
	if got != want {
		t.Fatalf("cookie\n got %s\nwant %s", got, want)
	}
	pool := pgtest.NewPool(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, Outbound: loopbackOnly, Secrets: testKeyring})
	t.Cleanup(svc.Close)
	api := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool, CookieSecret: []byte("s3cret")}))
	t.Cleanup(api.Close)
	h := &harness{t: t, pool: pool, api: api, key: newKey(t, pool, "")}
	cookie := h.login(h.key)
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": cookie}, ""); code != 200 {
		t.Fatalf("signed cookie = %d", code)
	}
	token := strings.SplitN(strings.TrimPrefix(cookie, "better-auth.session_token="), ".", 2)[0]
	for _, bad := range []string{"better-auth.session_token=" + token, "better-auth.session_token=" + token + ".AAAA", "__Secure-" + cookie + "x"} {
		if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": bad}, ""); code != 401 {
			t.Errorf("cookie %s = %d", bad, code)
		}
	}
	if code, _, _ := h.call("GET", "/v1/sources", map[string]string{"Cookie": "__Secure-" + cookie}, ""); code != 200 {
		t.Error("__Secure- prefixed cookie refused")
	}
}

func TestMetricsEndpointIsOptInAndTokenGuarded(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	svc := handlers.NewService(handlers.ServiceParams{Pool: pool, Outbound: loopbackOnly, Secrets: testKeyring})
	t.Cleanup(svc.Close)
	m := handlers.NewMetrics(pool, nil)
	hidden := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool, Metrics: m}))
	t.Cleanup(hidden.Close)
	guarded := httptest.NewServer(handlers.NewAPI(handlers.APIParams{Service: svc, Pool: pool, Metrics: m, MetricsOnAPI: true, MetricsToken: "tok-123"}))
	t.Cleanup(guarded.Close)
	get := func(url, auth string) int {
		req, _ := http.NewRequest("GET", url+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get(hidden.URL, ""); c != 404 {
		t.Errorf("metrics not opted in = %d", c)
	}
	if c := get(guarded.URL, ""); c != 401 {
		t.Errorf("no token = %d", c)
	}
	if c := get(guarded.URL, "Bearer wrong"); c != 401 {
		t.Errorf("wrong token = %d", c)
	}
	if c := get(guarded.URL, "Bearer tok-123"); c != 200 {
		t.Errorf("token = %d", c)
	}
}
