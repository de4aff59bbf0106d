package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/pgtest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// A known scenario, recorded with fixed ids and clock: a webhook, a 503, an
// automatic retry scheduled, an operator's manual retry pulling it forward,
// and a 200.
func auditScenario(t *testing.T) (ctx context.Context, db eventstore.DBTX) {
	ctx = context.Background()
	pool := pgtest.NewPool(t)
	t0 := time.Date(2026, 3, 1, 14, 30, 0, 0, time.UTC)
	now := t0
	store := eventstore.New(func() time.Time { return now })
	id := func(n int) uuid.UUID {
		return uuid.MustParse("00000000-0000-7000-8000-" + strings.Repeat("0", 11) + string(rune('0'+n)))
	}
	const (
		org, env = "org0000000000000000000000000000a", "env0000000000000000000000000000a"
		eventID  = "evt00000000000000000000000000001"
		delivery = "dlv00000000000000000000000000001"
		dest     = "dst00000000000000000000000000001"
		conn     = "con00000000000000000000000000001"
		a1, a2   = "att00000000000000000000000000001", "att00000000000000000000000000002"
		a2manual = "att00000000000000000000000000003"
	)
	code503, code200 := 503, 200
	body503, body200 := "upstream busy", `{"ok":true}`
	err503 := "HTTP 503"
	appendAt := func(at time.Duration, a ...eventstore.StreamAppend) {
		t.Helper()
		now = t0.Add(at)
		if _, err := store.AppendMany(ctx, pool, a...); err != nil {
			t.Fatal(err)
		}
	}
	ingest := eventstore.Metadata{Actor: "ingest", RequestID: "req_ingest01", CorrelationID: eventID}
	appendAt(0,
		eventstore.StreamAppend{StreamType: domain.StreamEvent, StreamID: eventID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{ID: id(1), Type: domain.EvEventReceived, Metadata: ingest, Payload: domain.EventReceived{
				EventID: eventID, SourceID: "src00000000000000000000000000001", SourceName: "shop", SourceSlug: "shop", Method: "POST",
				ContentType: "application/json", SourceIP: "203.0.113.7", BodyB64: "e30=", BodySize: 2, Deliveries: 1, ReceivedAt: t0}}}},
		eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: delivery, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{ID: id(2), Type: domain.EvDeliveryRequested,
				Metadata: eventstore.Metadata{Actor: "ingest", RequestID: "req_ingest01", CorrelationID: eventID, CausationID: id(1).String()},
				Payload: domain.DeliveryRequested{DeliveryID: delivery, EventID: eventID, ReceivedUUID: id(1).String(), ConnectionID: conn,
					ConnectionName: "shop to orders", DestinationID: dest, DestinationName: "orders", RequestURL: "https://orders.example/hook",
					RequestMethod: "POST", AttemptID: a1, TriggerType: domain.TriggerInitial, RequestedAt: t0}}}})
	engine := eventstore.Metadata{Actor: "engine", CorrelationID: eventID}
	appendAt(120*time.Millisecond, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: delivery, OrgID: org, EnvID: env, Expected: 1,
		Events: []eventstore.NewEvent{
			{ID: id(3), Type: domain.EvDeliveryAttempted, Metadata: engine, Payload: domain.DeliveryAttempted{AttemptID: a1, EventID: eventID,
				AttemptNumber: 1, TriggerType: domain.TriggerInitial, RequestURL: "https://orders.example/hook", RequestMethod: "POST",
				RequestHeaders: "{}", RequestBodySize: 2, ResponseStatus: &code503, ResponseBody: &body503, DurationMS: 118,
				Status: domain.AttemptFailed, Error: &err503, StartedAt: t0.Add(2 * time.Millisecond)}},
			{ID: id(4), Type: domain.EvRetryScheduled, Metadata: engine, Payload: domain.RetryScheduled{AfterAttemptID: a1, NextAttemptID: a2,
				AttemptNumber: 2, NotBefore: t0.Add(30*time.Second + 120*time.Millisecond)}},
		}})
	appendAt(10*time.Second, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: delivery, OrgID: org, EnvID: env, Expected: 3,
		Events: []eventstore.NewEvent{{ID: id(5), Type: domain.EvRetryRequested,
			Metadata: eventstore.Metadata{Actor: "api_key:key0000000000001", RequestID: "req_retry001", CorrelationID: eventID, CausationID: a1},
			Payload: domain.RetryRequested{AttemptID: a2manual, AttemptNumber: 2, FromAttemptID: a1, RequestURL: "https://orders.example/hook",
				RequestMethod: "POST", RequestedAt: t0.Add(10 * time.Second)}}}})
	appendAt(10*time.Second+45*time.Millisecond, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: delivery, OrgID: org, EnvID: env, Expected: 4,
		Events: []eventstore.NewEvent{{ID: id(6), Type: domain.EvDeliveryAttempted, Metadata: engine, Payload: domain.DeliveryAttempted{
			AttemptID: a2manual, EventID: eventID, AttemptNumber: 2, TriggerType: domain.TriggerManual, RequestURL: "https://orders.example/hook",
			RequestMethod: "POST", RequestHeaders: "{}", RequestBodySize: 2, ResponseStatus: &code200, ResponseBody: &body200, DurationMS: 41,
			Status: domain.AttemptSuccess, StartedAt: t0.Add(10*time.Second + 3*time.Millisecond)}}}})
	return ctx, pool
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run Audit -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestAuditMatchesGoldenFiles(t *testing.T) {
	t.Parallel()
	ctx, db := auditScenario(t)
	for _, c := range []struct {
		args   []string
		golden string
	}{
		{[]string{"delivery", "dlv00000000000000000000000000001"}, "audit_delivery.golden"},
		// By any of its attempts, the scheduled one included.
		{[]string{"attempt", "att00000000000000000000000000002"}, "audit_delivery.golden"},
		{[]string{"event", "evt00000000000000000000000000001", "--json"}, "audit_event_json.golden"},
		// Between the 503 and the manual retry: the automatic retry is scheduled.
		{[]string{"attempt", "att00000000000000000000000000001", "--as-of", "2026-03-01T14:30:05Z"}, "audit_as_of.golden"},
	} {
		req, err := parseAudit(c.args)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := writeAudit(ctx, db, req, &out); err != nil {
			t.Fatalf("audit %v: %v", c.args, err)
		}
		golden(t, c.golden, bytes.ReplaceAll(out.Bytes(), []byte("Audit of attempt att00000000000000000000000000002"), []byte("Audit of delivery dlv00000000000000000000000000001")))
	}
}

func TestAuditBadInput(t *testing.T) {
	t.Parallel()
	ctx, db := auditScenario(t)
	for _, args := range [][]string{{}, {"attempt"}, {"thing", "x"}, {"event", "x", "--as-of", "yesterday"}, {"event", "x", "--nope"}} {
		if _, err := parseAudit(args); err == nil {
			t.Errorf("audit %v: no error", args)
		}
	}
	for _, args := range [][]string{{"attempt", "missing"}, {"delivery", "missing"}, {"event", "missing"}} {
		req, _ := parseAudit(args)
		var out bytes.Buffer
		if err := writeAudit(ctx, db, req, &out); err == nil || !strings.Contains(err.Error(), "no ") {
			t.Errorf("audit %v = %v, want a not-found error", args, err)
		}
	}
}
