package handlers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// dispatched is how many jobs the harness's engine sent to its lanes by
// each path, since before.
func (h *harness) dispatched(before map[string]float64) (handoff, claim float64) {
	h.t.Helper()
	after := h.scrape()
	series := func(path string) string { return `hookstream_jobs_dispatched_total{path="` + path + `"}` }
	return after[series("handoff")] - before[series("handoff")], after[series("claim")] - before[series("claim")]
}

// Ingest in the engine's process leases the new jobs in its own transaction
// and hands them to the engine's lanes: no claim reads them. Each job is
// sent by exactly one path, once.
func TestIngestHandsItsJobsToTheEngine(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s := newSink(t)
	src, _ := h.route(s.srv.URL, nil, nil)
	before := h.scrape()
	const webhooks = 8
	for i := 0; i < webhooks; i++ {
		// One at a time: each finds the destination idle (a destination with
		// a request in flight is left to claims).
		h.ingest(src, `{"n":1}`)
		waitFor(t, 10*time.Second, "the webhook's attempt recorded", func() bool { return len(h.attempts("status=success")) == i+1 })
	}
	h.quiet(10 * time.Second)
	if handoff, claim := h.dispatched(before); handoff != webhooks || claim != 0 {
		t.Fatalf("dispatched: %v handed off by ingest, %v claimed; want all %d handed off, once each", handoff, claim, webhooks)
	}
	if got := s.count(); got != webhooks {
		t.Fatalf("the destination got %d requests for %d webhooks", got, webhooks)
	}
	seen := map[string]bool{}
	for _, hd := range s.headers {
		key := hd.Get("Idempotency-Key")
		if seen[key] {
			t.Fatalf("delivery %s sent twice", key)
		}
		seen[key] = true
	}
	var leased int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM delivery_jobs WHERE leased_by IS NOT NULL`).Scan(&leased); err != nil {
		t.Fatal(err)
	}
	if leased != 0 {
		t.Fatalf("%d jobs still leased after every delivery was recorded", leased)
	}
}

// A job whose destination is paused is not handed over: the insert leaves it
// unleased, the room reserved for it is given back, and once resumed it is
// claimed and sent. Were the room not given back, the destination's lanes
// (two batches of 16 here) would be used up by three paused webhooks and
// nothing would be sent after the resume.
func TestIngestLeavesAPausedDestinationsJobsToClaims(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s := newSink(t)
	src, dest := h.route(s.srv.URL, nil, nil)
	if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"status": "paused"}); code != 200 {
		t.Fatalf("pause = %d %v", code, out)
	}
	before := h.scrape()
	for i := 0; i < 3; i++ {
		h.ingest(src, `{"paused":true}`)
	}
	var held, leased int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*), count(leased_by) FROM delivery_jobs WHERE destination_id = $1 AND state = 'scheduled'`,
		dest).Scan(&held, &leased); err != nil {
		t.Fatal(err)
	}
	if held != 3 || leased != 0 {
		t.Fatalf("paused destination: %d scheduled jobs, %d leased; want 3 waiting unleased", held, leased)
	}
	if handoff, _ := h.dispatched(before); handoff != 0 {
		t.Fatalf("%v jobs of a paused destination handed off", handoff)
	}
	if s.count() != 0 {
		t.Fatalf("a paused destination got %d requests", s.count())
	}
	if code, out := h.do("PATCH", "/v1/destinations/"+dest, h.key, map[string]any{"status": "active"}); code != 200 {
		t.Fatalf("resume = %d %v", code, out)
	}
	waitFor(t, 10*time.Second, "the held webhooks recorded after the resume", func() bool { return len(h.attempts("status=success")) == 3 })
	for i := 0; i < 3; i++ { // one at a time, each to an idle destination
		h.ingest(src, `{"paused":false}`)
		waitFor(t, 10*time.Second, "a later webhook recorded", func() bool { return len(h.attempts("status=success")) == 4+i })
	}
	h.quiet(10 * time.Second)
	if got := s.count(); got != 6 {
		t.Fatalf("the destination got %d requests for 6 webhooks", got)
	}
	if handoff, claim := h.dispatched(before); handoff != 3 || claim != 3 {
		t.Fatalf("dispatched: %v handed off, %v claimed; want the 3 held claimed, the 3 later handed off", handoff, claim)
	}
}

// Lanes that record at about the same time share one transaction: six
// destinations' batches, answered together, are recorded in fewer
// transactions than batches, and every attempt is recorded.
func TestLanesRecordTogether(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const dests = 6
	var arrived sync.WaitGroup
	arrived.Add(dests)
	release := make(chan struct{})
	go func() { arrived.Wait(); close(release) }()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		select { // every destination's request is in flight: all answer at once
		case <-release:
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	var sources []string
	for i := 0; i < dests; i++ {
		src, _ := h.route(srv.URL+"/d"+strconv.Itoa(i), nil, nil)
		sources = append(sources, src)
	}
	before := h.scrape()
	var wg sync.WaitGroup
	for _, src := range sources {
		wg.Go(func() { h.ingest(src, `{"together":true}`) })
	}
	wg.Wait()
	waitFor(t, 15*time.Second, "every attempt recorded", func() bool {
		return len(h.attempts("status=success")) == dests
	})
	after := h.scrape()
	groups := after["hookstream_record_groups_total"] - before["hookstream_record_groups_total"]
	batches := after["hookstream_record_group_batches_total"] - before["hookstream_record_group_batches_total"]
	if batches != dests || groups >= batches {
		t.Fatalf("%v batches recorded in %v transactions; want the %d batches in fewer transactions", batches, groups, dests)
	}
}

// A manual retry's API call answers with the outcome, so its batch records
// at once instead of waiting for other lanes' records to join it; the
// webhook's first attempt, which nobody waits for, joins a group.
func TestManualRetryRecordsAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s := newSink(t)
	src, _ := h.route(s.srv.URL, nil, nil)
	grouped := func(before map[string]float64) float64 {
		return h.scrape()["hookstream_record_group_batches_total"] - before["hookstream_record_group_batches_total"]
	}
	before := h.scrape()
	h.ingest(src, `{"n":1}`)
	waitFor(t, 10*time.Second, "the webhook's attempt recorded", func() bool { return len(h.attempts("status=success")) == 1 })
	if n := grouped(before); n != 1 {
		t.Fatalf("the first attempt's batch recorded through %v groups; want 1", n)
	}
	first := h.attempts("status=success")[0]
	before = h.scrape()
	code, out := h.do("POST", "/v1/delivery-attempts/"+first["id"].(string)+"/retry", h.key, nil)
	if code != 200 {
		t.Fatalf("retry = %d %v", code, out)
	}
	if a := out["delivery_attempt"].(map[string]any); a["trigger_type"] != "manual" || a["status"] != "success" {
		t.Fatalf("manual attempt = %v", a)
	}
	if n := grouped(before); n != 0 {
		t.Fatalf("the manual retry's batch waited in a group (%v); want it recorded alone, at once", n)
	}
}
