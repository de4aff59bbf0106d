package handlers_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hookstream/hookstream/eventstore"
)

// The projector folds what this process appended from the appenders' own
// values (eventstore/recent.go), not from the stored JSON; a value the JSON
// does not hold exactly (a response body that is not UTF-8, stored with
// U+FFFD) must still reach the read models as the log has it, and not stop
// the projector on text PostgreSQL refuses.
func TestProjectorFoldsAppendedValuesAsTheLogHoldsThem(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/binary" {
			_, _ = w.Write([]byte("caf\xc3 \xff\xfe")) // cut in a character, and bytes no text holds
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(dst.Close)
	binSrc, _ := h.route(dst.URL+"/binary", nil, nil)
	okSrc, _ := h.route(dst.URL+"/text", nil, nil)
	before := eventstore.RecentAttached()
	binEv := h.ingest(binSrc, `{"n":1}`)
	okEv := h.ingest(okSrc, `{"n":2}`)
	for _, c := range []struct{ ev, body string }{{binEv, "caf\ufffd \ufffd\ufffd"}, {okEv, "ok"}} {
		var list []map[string]any
		waitFor(t, 10*time.Second, "the attempt projected", func() bool {
			list = h.attempts("event_id=" + c.ev)
			return len(list) == 1 && list[0]["status"] == "success"
		})
		if got := list[0]["response_body"]; got != c.body {
			t.Errorf("response_body = %q, want %q", got, c.body)
		}
		waitFor(t, 10*time.Second, "the event delivered", func() bool { return h.eventStatus(c.ev) == "delivered" })
	}
	// The webhooks' EventReceived, DeliveryRequested and the text reply's
	// DeliveryAttempted at least were folded from their values (other tests
	// in this process add to the count, never take from it).
	if got := eventstore.RecentAttached() - before; got < 3 {
		t.Errorf("%d payloads folded from the appenders' values, want at least 3", got)
	}
}
