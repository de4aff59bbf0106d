package handlers_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hookstream/hookstream/handlers/tenancy"
)

// browser starts headless Chromium (Debian's chromium package; .ci/run
// installs it) for one test. Without it the test fails, saying how to get
// it, unless HOOKSTREAM_BROWSER_TESTS=0.
func browser(t *testing.T) context.Context {
	t.Helper()
	if os.Getenv("HOOKSTREAM_BROWSER_TESTS") == "0" {
		t.Skip("HOOKSTREAM_BROWSER_TESTS=0")
	}
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatal("no Chromium for the dashboard's browser tests: apt-get install chromium (or set HOOKSTREAM_BROWSER_TESTS=0 to skip them)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1280, 800),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	return ctx
}

// screenshot saves the page as PNG under HOOKSTREAM_SCREENSHOTS (the
// README's images: make screenshots), or nowhere.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("HOOKSTREAM_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// textOf waits for sel and returns its text.
func textOf(ctx context.Context, sel string) (string, error) {
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		return "", err
	}
	return chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
}

// waitText waits until sel's text contains want (or, with absent, no longer does).
func waitText(t *testing.T, ctx context.Context, sel, want string, absent bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := textOf(cctx, sel)
		cancel()
		last = s
		if err == nil && strings.Contains(s, want) != absent {
			return
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the page, not waiting for time to pass
	}
	page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash + " | flash: " + document.getElementById("flash").innerText + " | main: " + document.getElementById("main").innerText.slice(0, 800)`))
	if absent {
		t.Fatalf("%s still shows %q: %q (page %s)", sel, want, last, page)
	}
	t.Fatalf("%s never showed %q; last %q (page %s)", sel, want, last, page)
}

// fetchStatus runs fetch in the page (the browser's own cookie and origin)
// and returns the answer's status.
func fetchStatus(t *testing.T, ctx context.Context, method, path string, headers map[string]string) int {
	t.Helper()
	hs := "{"
	for k, v := range headers {
		hs += fmt.Sprintf("%q:%q,", k, v)
	}
	hs = strings.TrimSuffix(hs, ",") + "}"
	js := fmt.Sprintf(`fetch(%q, {method: %q, credentials: "same-origin", headers: %s, body: %s}).then(r => r.status)`,
		path, method, hs, map[bool]string{true: "undefined", false: `'{"name":"csrf-probe"}'`}[method == "GET"])
	code, err := chromedp.Run(ctx, chromedp.Evaluate[int](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("fetch %s %s: %v", method, path, err)
	}
	return code
}

// A user logs in with the key, builds a route through the forms, sees a
// webhook arrive in the live tail, opens its failed (dead-lettered)
// attempt, retries it to success, sees it leave the dead letters, and logs
// out; another tenant's ids are not-found pages and a write without the
// CSRF token is refused.
func TestDashboardInABrowser(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sinkSrv := newSink(t, 500) // fails its first answer, then succeeds
	ctx := browser(t)
	base := h.api.URL
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Another tenant's event and attempt, for the not-found pages.
	mine := h.key
	h.key = newKey(t, h.pool, "")
	otherSink := newSink(t)
	otherSrc, _ := h.route(otherSink.srv.URL, nil, nil)
	otherEvent := h.ingest(otherSrc, `{"tenant":"other"}`)
	var otherAttempt string
	waitFor(t, 20*time.Second, "the other tenant's attempt", func() bool {
		for _, a := range h.attempts("event_id=" + otherEvent) {
			otherAttempt, _ = a["id"].(string)
		}
		return otherAttempt != ""
	})
	h.key = mine

	// Log in with the keyboard: the key, then Enter.
	run("log in", chromedp.Navigate(base+"/#/login"), chromedp.WaitVisible(chromedp.CSS("#api-key")),
		chromedp.SendKeys(chromedp.CSS("#api-key"), h.key+"\r"), chromedp.WaitVisible(chromedp.CSS("#stats")))

	// A destination (no automatic retries: its first failure is a dead letter), a source, a connection.
	run("create a destination", chromedp.Navigate(base+"/#/destinations"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="destinations"] #c-name`)),
		chromedp.SendKeys(chromedp.CSS("#c-name"), "Orders sink"), chromedp.SendKeys(chromedp.CSS("#c-url"), sinkSrv.srv.URL+"/hook"),
		chromedp.Click(chromedp.CSS("#c-retry_enabled")), chromedp.Click(chromedp.CSS("#create-form button[type=submit]")))
	waitText(t, ctx, "main table", "Orders sink", false)
	waitText(t, ctx, "main table", "closed", false) // the circuit's state
	screenshot(t, ctx, "destinations")
	run("create a source", chromedp.Navigate(base+"/#/sources"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="sources"] #c-name`)),
		chromedp.SendKeys(chromedp.CSS("#c-name"), "Shop"), chromedp.Click(chromedp.CSS("#create-form button[type=submit]")))
	waitText(t, ctx, "main table", "/v1/ingest/", false)
	ingestURL, err := textOf(ctx, ".ingest-url")
	if err != nil {
		t.Fatal(err)
	}
	run("create a connection", chromedp.Navigate(base+"/#/connections"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="connections"] #c-name`)),
		chromedp.SendKeys(chromedp.CSS("#c-name"), "Shop to orders"), chromedp.Click(chromedp.CSS("#create-form button[type=submit]")))
	waitText(t, ctx, "main table", "Orders sink", false)

	// The live tail shows the webhook without a reload.
	run("open the events", chromedp.Navigate(base+"/#/events"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="events"] #live-state`)))
	waitText(t, ctx, "#live-state", "live", false)
	resp, err := http.Post(strings.TrimSpace(ingestURL), "application/json", strings.NewReader(`{"order":42,"total":"9.99"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ingest through %s: %v %v", ingestURL, resp, err)
	}
	resp.Body.Close()
	waitText(t, ctx, "#live-rows", "Shop", false)
	eventID, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#live-rows tr td.id")))
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "events")

	// The event's page shows its failed, dead-lettered attempt; open it and retry.
	run("open the event", chromedp.Click(chromedp.CSS("#live-rows tr td.id a")), chromedp.WaitVisible(chromedp.CSS("#payload")))
	waitText(t, ctx, "#payload", `"order": 42`, false)
	for {
		s, err := textOf(ctx, "main")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(s, "dlq") {
			break
		}
		run("reload the event", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#payload"))) // the attempt is recorded after ingest answers
	}
	screenshot(t, ctx, "event")
	run("open the attempt", chromedp.Click(chromedp.CSS(".delivery .timeline a")), chromedp.WaitVisible(chromedp.CSS("#retry")))
	waitText(t, ctx, "#response-body", "reply 1", false)
	waitText(t, ctx, "#history", "MovedToDLQ", false)
	run("retry", chromedp.Click(chromedp.CSS("#retry")))
	waitText(t, ctx, "#retry-outcome", "success", false)
	screenshot(t, ctx, "attempt")
	if sinkSrv.count() != 2 {
		t.Fatalf("the sink got %d requests, want 2 (the failure and the retry)", sinkSrv.count())
	}

	// It leaves the dead letters (still listed with "also show recovered").
	run("open the dead letters", chromedp.Navigate(base+"/#/dlq"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="dlq"]`)))
	waitText(t, ctx, "#dlq", "No dead letters", false)
	run("show recovered ones", chromedp.Click(chromedp.CSS("#show-recovered")))
	waitText(t, ctx, "#dlq", eventID, false)
	screenshot(t, ctx, "dlq")
	// The dead letter opened an issue: acknowledge it, and it leaves the open ones.
	run("open the issues", chromedp.Navigate(base+"/#/issues"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="issues"] #issues`)))
	waitText(t, ctx, "#issues", "Orders sink", false)
	run("acknowledge", chromedp.Click(chromedp.CSS("#issues .issue-acknowledge")))
	waitText(t, ctx, "#issues", "No open issues", false)
	run("all issues", chromedp.SetValue(chromedp.CSS("#issue-status"), "all"), chromedp.Evaluate[chromedp.Void](`document.getElementById("issue-status").dispatchEvent(new Event("change"))`))
	waitText(t, ctx, "#issues", "acknowledged", false)

	// Replay the last hour to the destination: the job shows its progress to the end.
	run("replay", chromedp.Navigate(base+"/#/replay"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="replay"] #replay-form`)),
		chromedp.Click(chromedp.CSS("#replay-form button[type=submit]")))
	waitText(t, ctx, "#replays", "completed", false)
	waitText(t, ctx, "#replays", "1/1", false)
	screenshot(t, ctx, "replay")

	run("the overview with traffic", chromedp.Navigate(base+"/#/"), chromedp.WaitVisible(chromedp.CSS(`main[data-page="overview"] .chart rect`)))
	screenshot(t, ctx, "overview")

	// Another tenant's ids: not-found pages.
	run("another tenant's event", chromedp.Navigate(base+"/#/events/"+otherEvent), chromedp.WaitVisible(chromedp.CSS(`main[data-page="event"] .notfound`)))
	run("another tenant's attempt", chromedp.Navigate(base+"/#/attempts/"+otherAttempt), chromedp.WaitVisible(chromedp.CSS(`main[data-page="attempt"] .notfound`)))
	waitText(t, ctx, "main", "No delivery attempt with this id", false)

	// A write from the page without the CSRF token is refused; with it, accepted.
	if code := fetchStatus(t, ctx, "POST", "/v1/sources", map[string]string{"Content-Type": "application/json"}); code != 403 {
		t.Fatalf("session write without the CSRF token = %d, want 403", code)
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM sources WHERE name = 'csrf-probe'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d sources stored by the refused write (%v)", n, err)
	}

	// A phone's width: nothing wider than the screen but the tables' own scroll.
	run("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile, chromedp.EmulatePortrait))
	for _, page := range []struct{ hash, name string }{{"#/", "overview"}, {"#/events", "events"}, {"#/events/" + eventID, "event"},
		{"#/dlq?all=1", "dlq"}, {"#/destinations", "destinations"}, {"#/replay", "replay"}} {
		run("open "+page.hash+" on a phone", chromedp.Navigate(base+"/"+page.hash), chromedp.WaitVisible(chromedp.CSS(`main[data-page="`+page.name+`"]`)))
		overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
		if err != nil || overflow {
			t.Errorf("%s is wider than a 390 px screen (%v)", page.hash, err)
		}
	}
	screenshot(t, ctx, "phone")
	run("back to desktop", chromedp.EmulateViewport(1280, 800))

	// Log out: the login page, and the API refuses the browser.
	run("log out", chromedp.Navigate(base+"/#/"), chromedp.WaitVisible(chromedp.CSS("#logout")), chromedp.Click(chromedp.CSS("#logout")),
		chromedp.WaitVisible(chromedp.CSS("#api-key")))
	if code := fetchStatus(t, ctx, "GET", "/v1/sources", nil); code != 401 {
		t.Fatalf("API after logout = %d, want 401", code)
	}
	run("a page after logout", chromedp.Navigate(base+"/#/events"), chromedp.WaitVisible(chromedp.CSS("#api-key")))
}

// A one-time link from `hookstream login-link` logs the browser in once.
func TestDashboardLoginLink(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := browser(t)
	link := loginLink(t, h)
	if err := chromedp.Do(ctx, chromedp.Navigate(h.api.URL+"/#/login?link="+link), chromedp.WaitVisible(chromedp.CSS("#use-link")),
		chromedp.Click(chromedp.CSS("#use-link")), chromedp.WaitVisible(chromedp.CSS("#stats"))); err != nil {
		t.Fatal(err)
	}
	hash, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash`))
	if err != nil || strings.Contains(hash, link) {
		t.Fatalf("the link's token is still in the address bar: %q %v", hash, err)
	}
	// Spent: a second browser is told so and stays logged out.
	ctx2 := browser(t)
	if err := chromedp.Do(ctx2, chromedp.Navigate(h.api.URL+"/#/login?link="+link), chromedp.WaitVisible(chromedp.CSS("#use-link")),
		chromedp.Click(chromedp.CSS("#use-link"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, ctx2, "#flash", "unknown, used or expired", false)
}

// loginLink makes a one-time login link of the harness key's environment and returns its token.
func loginLink(t *testing.T, h *harness) string {
	t.Helper()
	ctx := context.Background()
	org, env := h.tenant()
	l, err := tenancy.NewAccounts(h.pool, nil).CreateLoginLink(ctx, org, env, "test", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return l.Token
}
