// Package benchdata fills a database with a realistic event log for
// benchmarks: webhooks, their deliveries, failures, retries and dead letters.
package benchdata

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// Generate appends the history of n webhooks, each delivered to one of 10
// destinations: 80% succeed first time (3 events), 15% fail once then
// succeed (5 events), 5% fail twice and are dead-lettered (6 events), on average
// 3.45 events per webhook (60,000 webhooks: 207,000 events). It returns
// the number of events stored.
func Generate(ctx context.Context, pool *pgxpool.Pool, n int) (int64, error) {
	return GenerateWith(ctx, pool, n, Options{})
}

// Options shape a generated log.
type Options struct {
	// EventsOnly appends each webhook's EventReceived alone: no deliveries.
	EventsOnly bool
	// BodyBytes pads each body, a JSON order with a customer id of its own
	// ("cus_%07d" of the webhook's index), to about this size (0: the
	// default 32-byte body).
	BodyBytes int
}

// GenerateWith is Generate shaped by o.
func GenerateWith(ctx context.Context, pool *pgxpool.Pool, n int, o Options) (int64, error) {
	store := eventstore.New(nil)
	const org, env = "org_bench", "env_bench"
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	code200, code503 := 200, 503
	ok, busy, fail := `{"ok":true}`, "busy", "HTTP 503"
	body := map[string][]string{"Content-Type": {"application/json"}, "User-Agent": {"bench"}}
	var total int64
	var batch []eventstore.StreamAppend
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		stored, err := store.AppendMany(ctx, pool, batch...)
		total += int64(len(stored))
		batch = batch[:0]
		return err
	}
	for i := 0; i < n; i++ {
		at := base.Add(time.Duration(i) * time.Millisecond)
		eventID, deliveryID := fmt.Sprintf("%032x", i+1), fmt.Sprintf("%032x", 1<<40+i)
		received := uuid.Must(uuid.NewV7())
		dest := i % 10
		md := eventstore.Metadata{Actor: "ingest", CorrelationID: eventID}
		bodyB64, bodySize := "eyJ0eXBlIjoib3JkZXIuY3JlYXRlZCIsImlkIjo0Mn0=", 32
		if o.BodyBytes > 0 {
			raw := fmt.Sprintf(`{"type":"order.created","id":"evt_%d","customer":"cus_%07d","amount":%d,"currency":"eur","note":"`, i, i, 100+i%9000)
			raw += strings.Repeat("lorem ipsum ", max(0, o.BodyBytes-len(raw)-2)/12) + `"}`
			bodyB64, bodySize = base64.StdEncoding.EncodeToString([]byte(raw)), len(raw)
		}
		batch = append(batch, eventstore.StreamAppend{StreamType: domain.StreamEvent, StreamID: eventID, OrgID: org, EnvID: env, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{ID: received, Type: domain.EvEventReceived, Metadata: md, Payload: domain.EventReceived{
				EventID: eventID, SourceID: "src_bench", SourceName: "bench", SourceSlug: "bench", Method: "POST", Headers: body,
				ContentType: "application/json", SourceIP: "203.0.113.7", BodyB64: bodyB64, BodySize: bodySize,
				Deliveries: 1, ReceivedAt: at}}}})
		attempt := func(num int, trigger string, success bool, started time.Time) eventstore.NewEvent {
			a := domain.DeliveryAttempted{AttemptID: fmt.Sprintf("%032x", 1<<44+i*4+num), EventID: eventID, AttemptNumber: num, TriggerType: trigger,
				RequestURL: fmt.Sprintf("https://dest%d.example/hook", dest), RequestMethod: "POST", RequestHeaders: `{"Content-Type":"application/json"}`,
				RequestBodySize: 32, DurationMS: 12, Status: domain.AttemptSuccess, ResponseStatus: &code200, ResponseBody: &ok, StartedAt: started}
			if !success {
				a.Status, a.ResponseStatus, a.ResponseBody, a.Error = domain.AttemptFailed, &code503, &busy, &fail
			}
			return eventstore.NewEvent{Type: domain.EvDeliveryAttempted, Metadata: eventstore.Metadata{Actor: "engine", CorrelationID: eventID}, Payload: a}
		}
		if o.EventsOnly {
			if len(batch) >= 400 {
				if err := flush(); err != nil {
					return total, err
				}
			}
			continue
		}
		evs := []eventstore.NewEvent{{Type: domain.EvDeliveryRequested, Metadata: md, Payload: domain.DeliveryRequested{
			DeliveryID: deliveryID, EventID: eventID, ReceivedUUID: received.String(), ConnectionID: fmt.Sprintf("con_bench_%d", dest),
			ConnectionName: "bench", DestinationID: fmt.Sprintf("dst_bench_%d", dest), DestinationName: fmt.Sprintf("dest %d", dest),
			RequestURL: fmt.Sprintf("https://dest%d.example/hook", dest), RequestMethod: "POST", AttemptID: fmt.Sprintf("%032x", 1<<44+i*4+1),
			TriggerType: domain.TriggerInitial, RequestedAt: at}}}
		switch r := i % 20; {
		case r < 16:
			evs = append(evs, attempt(1, domain.TriggerInitial, true, at))
		case r < 19:
			evs = append(evs, attempt(1, domain.TriggerInitial, false, at),
				eventstore.NewEvent{Type: domain.EvRetryScheduled, Payload: domain.RetryScheduled{AfterAttemptID: fmt.Sprintf("%032x", 1<<44+i*4+1),
					NextAttemptID: fmt.Sprintf("%032x", 1<<44+i*4+2), AttemptNumber: 2, NotBefore: at.Add(30 * time.Second)}},
				attempt(2, domain.TriggerRetry, true, at.Add(30*time.Second)))
		default:
			evs = append(evs, attempt(1, domain.TriggerInitial, false, at),
				eventstore.NewEvent{Type: domain.EvRetryScheduled, Payload: domain.RetryScheduled{AfterAttemptID: fmt.Sprintf("%032x", 1<<44+i*4+1),
					NextAttemptID: fmt.Sprintf("%032x", 1<<44+i*4+2), AttemptNumber: 2, NotBefore: at.Add(30 * time.Second)}},
				attempt(2, domain.TriggerRetry, false, at.Add(30*time.Second)),
				eventstore.NewEvent{Type: domain.EvMovedToDLQ, Payload: domain.MovedToDLQ{AttemptID: fmt.Sprintf("%032x", 1<<44+i*4+2),
					EventID: eventID, Reason: "retries exhausted after 2 attempts", DLQAt: at.Add(30 * time.Second)}})
		}
		batch = append(batch, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: deliveryID, OrgID: org, EnvID: env,
			Expected: eventstore.NoStream, Events: evs})
		if len(batch) >= 400 {
			if err := flush(); err != nil {
				return total, err
			}
		}
	}
	return total, flush()
}
