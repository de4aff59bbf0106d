package handlers_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/projections"
)

// walk follows a list's cursors from its first page in one direction and
// returns the ids in the order read, page by page.
func (h *harness) walk(path, key, query string) (ids []string, pages int, last map[string]any) {
	h.t.Helper()
	q := query
	for pages = 0; pages < 100; pages++ {
		code, out := h.do("GET", path+"?"+q, h.key, nil)
		if code != 200 {
			h.t.Fatalf("GET %s?%s = %d %v", path, q, code, out)
		}
		for _, it := range out[key].([]any) {
			ids = append(ids, it.(map[string]any)["id"].(string))
		}
		last = out["pagination"].(map[string]any)
		next, ok := last["next_cursor"].(string)
		if !ok {
			return ids, pages + 1, last
		}
		if last["has_more"] != true {
			h.t.Fatalf("a next_cursor without has_more: %v", last)
		}
		q = query + "&cursor=" + url.QueryEscape(next)
	}
	h.t.Fatal("the walk did not end")
	return
}

// Events and delivery attempts page by keyset cursor: walking next_cursor
// reads every row once, in the offset listing's order, even while new rows
// arrive; prev_cursor walks back the same pages; a cursor is bound to its
// list and excludes offset.
func TestCursorPagingWalksEventsAndAttempts(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sink := newSink(t)
	src, _ := h.route(sink.srv.URL, nil, nil)
	for i := 0; i < 25; i++ {
		h.ingest(src, fmt.Sprintf(`{"n":%d}`, i))
	}
	waitFor(t, 10*time.Second, "every event listed and attempted", func() bool {
		return h.eventCount("") == 25 && len(h.attempts("limit=100&status=success")) == 25
	})
	for _, l := range []struct{ path, key string }{{"/v1/events", "events"}, {"/v1/delivery-attempts", "delivery_attempts"}} {
		_, all := h.do("GET", l.path+"?limit=100", h.key, nil)
		var want []string
		for _, it := range all[l.key].([]any) {
			want = append(want, it.(map[string]any)["id"].(string))
		}
		got, pages, _ := h.walk(l.path, l.key, "limit=10")
		if !slices.Equal(got, want) || pages != 3 {
			t.Fatalf("%s: walked %d pages, ids %v, want %v", l.path, pages, got, want)
		}
		// New rows arriving during a walk do not shift it (as offsets would).
		_, first := h.do("GET", l.path+"?limit=10", h.key, nil)
		cursor := first["pagination"].(map[string]any)["next_cursor"].(string)
		if l.key == "events" {
			h.ingest(src, `{"n":"late"}`)
			waitFor(t, 10*time.Second, "the late event listed", func() bool { return h.eventCount("") == 26 })
		}
		_, second := h.do("GET", l.path+"?limit=10&cursor="+url.QueryEscape(cursor), h.key, nil)
		items := second[l.key].([]any)
		if len(items) != 10 || items[0].(map[string]any)["id"] != want[10] {
			t.Fatalf("%s: the second page after a new row starts at %v, want %s", l.path, items[0], want[10])
		}
		// Back from the second page: the first page again.
		prev := second["pagination"].(map[string]any)["prev_cursor"].(string)
		_, back := h.do("GET", l.path+"?limit=10&direction=prev&cursor="+url.QueryEscape(prev), h.key, nil)
		var backIDs []string
		for _, it := range back[l.key].([]any) {
			backIDs = append(backIDs, it.(map[string]any)["id"].(string))
		}
		if !slices.Equal(backIDs, want[:10]) {
			t.Fatalf("%s: prev page = %v, want %v", l.path, backIDs, want[:10])
		}
		if l.key == "events" { // the late event is newer than the first page
			if p := back["pagination"].(map[string]any); p["has_more"] != true || p["prev_cursor"] == nil {
				t.Fatalf("%s: back on the first page with a newer row: %v", l.path, p)
			}
		}
		other := "/v1/delivery-attempts"
		if l.key != "events" {
			other = "/v1/events"
		}
		for _, bad := range []string{"cursor=" + url.QueryEscape(cursor) + "&offset=10", "cursor=nope", "direction=prev",
			"cursor=" + url.QueryEscape(cursor) + "&direction=up"} {
			if code, out := h.do("GET", l.path+"?"+bad, h.key, nil); code != 400 {
				t.Errorf("%s?%s = %d %v, want 400", l.path, bad, code, out)
			}
		}
		if code, out := h.do("GET", other+"?cursor="+url.QueryEscape(cursor), h.key, nil); code != 400 ||
			!strings.Contains(fmt.Sprint(out["error"]), "cursor") {
			t.Errorf("%s's cursor on %s = %d %v, want 400", l.path, other, code, out)
		}
	}
}

// search finds events by id prefix or by bytes of their body, pages with
// next_cursor, and bounds the rows one request reads: a search stopped by
// the bound says so with has_more and continues from its next_cursor.
func TestEventSearchByIDPrefixAndBody(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sink := newSink(t)
	src, _ := h.route(sink.srv.URL, nil, nil)
	var marked []string
	for i := 0; i < 12; i++ {
		body := fmt.Sprintf(`{"n":%d}`, i)
		if i%4 == 0 {
			body = fmt.Sprintf(`{"n":%d,"customer":"cus_Needle%d"}`, i, i)
		}
		id := h.ingest(src, body)
		if i%4 == 0 {
			marked = append([]string{id}, marked...) // newest first
		}
	}
	waitFor(t, 10*time.Second, "every event listed", func() bool { return h.eventCount("") == 12 })
	search := func(q string) (ids []string, p map[string]any) {
		code, out := h.do("GET", "/v1/events?"+q, h.key, nil)
		if code != 200 {
			t.Fatalf("search %s = %d %v", q, code, out)
		}
		for _, it := range out["events"].([]any) {
			ids = append(ids, it.(map[string]any)["id"].(string))
		}
		return ids, out["pagination"].(map[string]any)
	}
	if ids, p := search("search=cus_Needle"); !slices.Equal(ids, marked) || p["has_more"] != false || p["total"] != nil {
		t.Fatalf("body search = %v %v, want %v", ids, p, marked)
	}
	if ids, _ := search("search=cus_needle"); len(ids) != 0 {
		t.Fatalf("the body search is case-sensitive, found %v", ids)
	}
	if ids, _ := search("search=" + marked[1]); !slices.Equal(ids, marked[1:2]) {
		t.Fatalf("search by a full id = %v, want %v", ids, marked[1])
	}
	if ids, _ := search("search=" + marked[1][:31]); !slices.Contains(ids, marked[1]) || len(ids) > 16 {
		t.Fatalf("search by an id prefix = %v", ids)
	}
	// Paged: two matches a page.
	ids, pages, _ := h.walk("/v1/events", "events", "search=cus_Needle&limit=2")
	if !slices.Equal(ids, marked) || pages != 2 {
		t.Fatalf("paged search = %v in %d pages", ids, pages)
	}
	if code, _ := h.do("GET", "/v1/events?search=", h.key, nil); code != 400 {
		t.Errorf("an empty search = %d, want 400", code)
	}
	if code, _ := h.do("GET", "/v1/events?search="+strings.Repeat("a", 201), h.key, nil); code != 400 {
		t.Errorf("a 201-byte search = %d, want 400", code)
	}
	// The read bound: 5 events a request finds the marked ones within the
	// 5 newest, then continues from where it stopped.
	_, first := h.do("GET", "/v1/events/"+marked[0], h.key, nil)
	ev := first["event"].(map[string]any)
	tenant := domain.Tenant{OrgID: ev["org_id"].(string), EnvID: ev["env_id"].(string)}
	reads := projections.NewReads(h.pool)
	f := projections.EventFilter{Search: "cus_Needle", Limit: 10, ScanLimit: 5}
	var found []string
	for req := 0; ; req++ {
		out, p, err := reads.ListEvents(context.Background(), tenant, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range out {
			found = append(found, e.ID)
		}
		if !p.HasMore {
			if req != 2 { // 12 events read 5 at a time
				t.Errorf("bounded search ended after %d requests, want 3", req+1)
			}
			break
		}
		c, err := projections.DecodeCursor("ev", *p.NextCursor)
		if err != nil {
			t.Fatal(err)
		}
		f.Cursor = &c
	}
	if !slices.Equal(found, marked) {
		t.Fatalf("bounded search found %v, want %v", found, marked)
	}
}
