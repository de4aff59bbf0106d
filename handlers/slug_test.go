package handlers_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Slugs are unique per environment for sources and destinations: a slug
// the client gives that another row has is a 409 (also under concurrent
// creates, also by PATCH), a slug derived from a name gets the first free
// suffix, and another environment may use the same slug.
func TestSlugsAreUniquePerEnvironment(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	other := newKey(t, h.pool, "")
	for _, c := range []struct{ path, key string }{{"/v1/sources", "source"}, {"/v1/destinations", "destination"}} {
		body := func(extra map[string]any) map[string]any {
			b := map[string]any{"name": "Billing Events"}
			if c.key == "destination" {
				b["url"] = "https://example.com/hook"
			}
			for k, v := range extra {
				b[k] = v
			}
			return b
		}
		first := h.mustCreate(c.path, body(map[string]any{"slug": "billing"}))
		code, out := h.do("POST", c.path, h.key, body(map[string]any{"slug": "billing"}))
		if code != 409 || !strings.Contains(fmt.Sprint(out["error"]), "Slug already exists") {
			t.Fatalf("%s: a taken slug = %d %v, want 409", c.path, code, out)
		}
		if code, out := h.do("POST", c.path, other, body(map[string]any{"slug": "billing"})); code != 201 {
			t.Fatalf("%s: the same slug in another environment = %d %v", c.path, code, out)
		}
		// Derived from the name: billing-events, then billing-events-2, -3.
		var derived []string
		for i := 0; i < 3; i++ {
			derived = append(derived, h.mustCreate(c.path, body(nil))["slug"].(string))
		}
		if strings.Join(derived, " ") != "billing-events billing-events-2 billing-events-3" {
			t.Fatalf("%s: derived slugs %v", c.path, derived)
		}
		// PATCH to a taken slug is refused and changes nothing; keeping
		// one's own slug, or taking a free one, passes.
		id := first["id"].(string)
		if code, out := h.do("PATCH", c.path+"/"+id, h.key, map[string]any{"slug": "billing-events-2"}); code != 409 {
			t.Fatalf("%s: PATCH to a taken slug = %d %v", c.path, code, out)
		}
		if code, out := h.do("PATCH", c.path+"/"+id, h.key, map[string]any{"slug": "billing", "name": "renamed"}); code != 200 {
			t.Fatalf("%s: PATCH keeping the slug = %d %v", c.path, code, out)
		}
		if code, out := h.do("GET", c.path+"/"+id, h.key, nil); code != 200 || out[c.key].(map[string]any)["slug"] != "billing" {
			t.Fatalf("%s: after the refused PATCH = %d %v", c.path, code, out)
		}
		// Ten concurrent creates of one slug: one wins.
		var wg sync.WaitGroup
		codes := make([]int, 10)
		for i := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes[i], _ = h.do("POST", c.path, h.key, body(map[string]any{"slug": "raced"}))
			}()
		}
		wg.Wait()
		won := 0
		for _, code := range codes {
			switch code {
			case 201:
				won++
			case 409:
			default:
				t.Errorf("%s: concurrent create = %d", c.path, code)
			}
		}
		if won != 1 {
			t.Errorf("%s: %d of 10 concurrent creates of one slug succeeded, want 1 (%v)", c.path, won, codes)
		}
	}
}
