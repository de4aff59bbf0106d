package handlers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hookstream/hookstream/projections"
)

// The unfiltered events and attempts lists take their total from counters
// the read models' triggers keep: it equals a count of the rows, also
// after a rebuild swapped the tables (which keeps their triggers and
// storage parameters) and for webhooks after it.
func TestListTotalsStayExactThroughRebuilds(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	sink := newSink(t)
	src, _ := h.route(sink.srv.URL, nil, nil)
	other := newKey(t, h.pool, "") // another environment's rows are not in this one's totals
	code, out := h.do("POST", "/v1/sources", other, map[string]any{"name": "theirs"})
	if code != 201 {
		t.Fatal(code, out)
	}
	h.ingest(out["source"].(map[string]any)["id"].(string), `{}`)
	check := func(events, attempts int) {
		t.Helper()
		waitFor(t, 10*time.Second, "the totals", func() bool {
			_, e := h.do("GET", "/v1/events", h.key, nil)
			_, a := h.do("GET", "/v1/delivery-attempts", h.key, nil)
			return num(e["pagination"].(map[string]any)["total"]) == events && num(a["pagination"].(map[string]any)["total"]) == attempts
		})
	}
	for i := 0; i < 5; i++ {
		h.ingest(src, `{}`)
	}
	check(5, 5)
	for _, name := range []string{"events", "delivery_attempts"} {
		if _, err := projections.Rebuild(ctx, h.pool, name, projections.RebuildOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	check(5, 5)
	for i := 0; i < 3; i++ {
		h.ingest(src, `{}`)
	}
	check(8, 8)
	// The counters agree with the rows, environment by environment.
	var wrong int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM (
			SELECT org_id, env_id, 'events' AS list, count(*) AS n FROM events_view GROUP BY 1, 2
			UNION ALL SELECT org_id, env_id, 'attempts', count(*) FROM delivery_attempts GROUP BY 1, 2) c
		FULL JOIN list_counts l USING (org_id, env_id, list) WHERE c.n IS DISTINCT FROM l.n`).Scan(&wrong); err != nil || wrong != 0 {
		t.Fatalf("%d counters differ from their rows (%v)", wrong, err)
	}
	var opts string
	if err := h.pool.QueryRow(ctx, `SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'public.delivery_attempts'::regclass`).Scan(&opts); err != nil ||
		!strings.Contains(opts, "autovacuum_vacuum_scale_factor=0.05") {
		t.Fatalf("delivery_attempts options after a rebuild: %q (%v)", opts, err)
	}
}
