package handlers_test

import (
	"testing"
)

// A known path with a method it does not serve is a 405 with the methods it
// does serve in Allow, not a 404 that says the path does not exist.
func TestUnservedMethodIs405WithAllow(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for path, allow := range map[string]string{
		"/v1/sources":      "GET, POST",
		"/v1/destinations": "GET, POST",
		"/v1/sources/01a2330b9aa67a8097cfac5bc3540d14": "DELETE, GET, PATCH",
		"/v1/delivery-attempts":                        "GET",
	} {
		code, out, resp := h.call("PUT", path, map[string]string{"X-API-Key": h.key}, `{}`)
		if code != 405 || out["status"] != float64(405) {
			t.Errorf("PUT %s = %d %v, want a JSON 405", path, code, out)
			continue
		}
		if got := resp.Header.Get("Allow"); got != allow {
			t.Errorf("PUT %s: Allow %q, want %q", path, got, allow)
		}
	}
	if code, _, _ := h.call("PUT", "/v1/no-such-thing", map[string]string{"X-API-Key": h.key}, `{}`); code != 404 {
		t.Errorf("PUT on an unknown path = %d, want 404", code)
	}
}
