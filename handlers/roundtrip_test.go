package handlers_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// What a GET returns, sent back unchanged as a PATCH, is accepted and
// changes nothing but updated_at, for every configuration resource: flags
// come back as 0/1, JSON-valued fields as JSON strings, read-only fields as
// they are stored. A read-only field that differs is a 400 naming it.
func TestGetThenPatchTheSameObject(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := h.mustCreate("/v1/destinations", map[string]any{"name": "orders", "url": "https://orders.example/hook",
		"headers": map[string]string{"X-Team": "shop", "Authorization": "Bearer s3cret-token"}, "retry_intervals": []int{10, 60},
		"retry_backoff_type": "fixed", "retry_enabled": true, "circuit_breaker_enabled": false})
	src := h.mustCreate("/v1/sources", map[string]any{"name": "shop", "verification_type": "hmac_sha256", "verification_secret": "whsec_abcdef123456",
		"ip_allowlist": []string{"203.0.113.0/24"}, "dedup_enabled": true, "dedup_strategy": "payload_hash"})
	conn := h.mustCreate("/v1/connections", map[string]any{"name": "shop to orders", "source_id": src["id"], "destination_id": dst["id"],
		"filter_rules": []map[string]any{{"field": "payload.type", "op": "eq", "value": "order.created"}}})

	for _, c := range []struct{ path, one string }{
		{"/v1/destinations/" + dst["id"].(string), "destination"},
		{"/v1/sources/" + src["id"].(string), "source"},
		{"/v1/connections/" + conn["id"].(string), "connection"},
	} {
		code, out := h.do("GET", c.path, h.key, nil)
		if code != 200 {
			t.Fatalf("GET %s = %d %v", c.path, code, out)
		}
		before := out[c.one].(map[string]any)
		code, out = h.do("PATCH", c.path, h.key, before)
		if code != 200 {
			t.Errorf("PATCH %s with its own GET = %d %v", c.path, code, out)
			continue
		}
		code, out = h.do("GET", c.path, h.key, nil)
		after := out[c.one].(map[string]any)
		for k, v := range before {
			if k == "updated_at" {
				continue
			}
			if a, b := mustJSON(t, v), mustJSON(t, after[k]); a != b {
				t.Errorf("%s: %s changed from %s to %s by a PATCH of the unchanged object", c.path, k, a, b)
			}
		}
		// A read-only field that differs from the stored one is refused.
		changed := map[string]any{"created_at": "2020-01-01T00:00:00Z", "name": "renamed"}
		if code, out := h.do("PATCH", c.path, h.key, changed); code != 400 || !strings.Contains(out["error"].(string), "'created_at' is read-only") {
			t.Errorf("PATCH %s with another created_at = %d %v, want 400 naming it", c.path, code, out)
		}
	}

	// Flags as 0/1 and JSON-valued fields as strings, as responses show them.
	code, out := h.do("PATCH", "/v1/destinations/"+dst["id"].(string), h.key, map[string]any{
		"retry_enabled": 0, "circuit_breaker_enabled": 1, "retry_intervals": "[5]", "headers": `{"X-Team":"payments"}`})
	if code != 200 {
		t.Fatalf("PATCH with 0/1 flags and string-encoded JSON = %d %v", code, out)
	}
	d := out["destination"].(map[string]any)
	if num(d["retry_enabled"]) != 0 || num(d["circuit_breaker_enabled"]) != 1 || d["retry_intervals"] != "[5]" || !strings.Contains(d["headers"].(string), "payments") {
		t.Errorf("destination after PATCH = %v", d)
	}
	for body, want := range map[string]string{
		`{"retry_enabled": 2}`:         "'retry_enabled' must be a boolean",
		`{"retry_intervals": "[oops"}`: "'retry_intervals' must be an array",
		`{"headers": "[1]"}`:           "'headers' must be an object",
	} {
		code, raw, _ := h.send("PATCH", "/v1/destinations/"+dst["id"].(string), map[string]string{"X-API-Key": h.key, "Content-Type": "application/json"}, body)
		if code != 400 || !strings.Contains(string(raw), want) {
			t.Errorf("PATCH %s = %d %s, want 400 %q", body, code, raw, want)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A connection to an id that does not exist (a placeholder pasted as is)
// says which of the two is missing.
func TestConnectionToAMissingIDSaysWhich(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	src := h.mustCreate("/v1/sources", map[string]any{"name": "s"})
	dst := h.mustCreate("/v1/destinations", map[string]any{"name": "d", "url": "https://example.com/hook"})
	for body, want := range map[string]map[string]any{
		`no source "SOURCE_ID"`:           {"name": "c", "source_id": "SOURCE_ID", "destination_id": dst["id"]},
		`no destination "DESTINATION_ID"`: {"name": "c", "source_id": src["id"], "destination_id": "DESTINATION_ID"},
	} {
		code, out := h.do("POST", "/v1/connections", h.key, want)
		if msg, _ := out["error"].(string); code != 404 || !strings.Contains(msg, "Source or destination not found") || !strings.Contains(msg, body) {
			t.Errorf("POST /v1/connections %v = %d %v, want 404 naming %s", want, code, out, body)
		}
	}
}

// Sources, destinations and connections paginate like hookstream's lists:
// limit (at most 100) and the cursor of the previous page, newest first,
// every item once; unknown parameters and bad values are 400s.
func TestConfigurationListsPaginate(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var made []string
	for i := 0; i < 5; i++ {
		made = append(made, h.mustCreate("/v1/sources", map[string]any{"name": fmt.Sprintf("s%d", i)})["id"].(string))
	}
	var seen []string
	cursor := ""
	for page := 0; ; page++ {
		path := "/v1/sources?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		code, out := h.do("GET", path, h.key, nil)
		if code != 200 {
			t.Fatalf("GET %s = %d %v", path, code, out)
		}
		items := out["sources"].([]any)
		for _, it := range items {
			seen = append(seen, it.(map[string]any)["id"].(string))
		}
		if out["has_more"] != true {
			if out["cursor"] != nil || page != 2 || len(items) != 1 {
				t.Fatalf("last page %d: %d items, cursor %v", page, len(items), out["cursor"])
			}
			break
		}
		if len(items) != 2 || out["cursor"] == nil {
			t.Fatalf("page %d: %d items, cursor %v", page, len(items), out["cursor"])
		}
		cursor = out["cursor"].(string)
	}
	slices.Reverse(made) // newest first
	if strings.Join(seen, ",") != strings.Join(made, ",") {
		t.Fatalf("pages gave %v, want %v", seen, made)
	}
	for _, q := range []string{"/v1/sources?limit=0", "/v1/sources?limit=101", "/v1/destinations?cursor=not-a-cursor", "/v1/connections?sauce_id=x", "/v1/sources?offset=1"} {
		if code, out := h.do("GET", q, h.key, nil); code != 400 {
			t.Errorf("GET %s = %d %v, want 400", q, code, out)
		}
	}
	if code, out := h.do("GET", "/v1/connections?source_id="+made[0]+"&limit=100", h.key, nil); code != 200 || out["has_more"] != false {
		t.Errorf("connections of a source = %d %v", code, out)
	}
}
