package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

const auditUsage = `hookstream audit attempt|delivery|event ID [--as-of TIME] [--json]

Examples:
  hookstream audit event 0190…
  hookstream audit delivery 0190… --as-of 2026-03-01T12:00:00Z
  hookstream audit attempt 0190… --json`

func cmdAudit(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	req, err := parseAudit(args)
	if err != nil {
		return err
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	return writeAudit(ctx, db.Pool, req, stdout)
}

type auditRequest struct {
	kind, id string
	asOf     *time.Time
	json     bool
}

func parseAudit(args []string) (auditRequest, error) {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	asOf := fs.String("as-of", "", "show the state folded from the events recorded up to this time (RFC 3339)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseFlags(fs, args, auditUsage)
	if err != nil {
		return auditRequest{}, err
	}
	if len(pos) != 2 || (pos[0] != "attempt" && pos[0] != "delivery" && pos[0] != "event") {
		return auditRequest{}, usageError{"audit: want attempt, delivery or event, and an id", auditUsage}
	}
	r := auditRequest{kind: pos[0], id: pos[1], json: *asJSON}
	if *asOf != "" {
		t, err := parseTime("--as-of", *asOf)
		if err != nil {
			return r, usageError{"audit: " + err.Error(), auditUsage}
		}
		r.asOf = &t
	}
	return r, nil
}

// auditEvent is one event of an audit trail.
type auditEvent struct {
	Time          time.Time      `json:"time"`
	Position      int64          `json:"position"`
	StreamType    string         `json:"stream_type"`
	StreamID      string         `json:"stream_id"`
	Version       int64          `json:"version"`
	Type          string         `json:"type"`
	Actor         string         `json:"actor"`
	CorrelationID string         `json:"correlation_id"`
	CausationID   string         `json:"causation_id"`
	RequestID     string         `json:"request_id"`
	Summary       string         `json:"summary"`
	Payload       map[string]any `json:"payload"` // the stored payload, the webhook body left out
}

// deliveryState is a delivery folded from its events (up to --as-of).
type deliveryState struct {
	DeliveryID      string          `json:"delivery_id"`
	EventID         string          `json:"event_id"`
	DestinationID   string          `json:"destination_id"`
	DestinationName string          `json:"destination_name"`
	ConnectionID    string          `json:"connection_id"`
	ConnectionName  string          `json:"connection_name"`
	Status          string          `json:"status"` // pending | retry_scheduled | manual_retry_pending | delivered | dead_lettered | failed
	Attempts        int             `json:"attempts"`
	LastAttempt     *attemptOutcome `json:"last_attempt"`
	NextAttempt     *nextAttempt    `json:"next_attempt"`
	Version         int64           `json:"version"`
}

type attemptOutcome struct {
	ID             string    `json:"id"`
	Number         int       `json:"number"`
	Trigger        string    `json:"trigger"`
	Status         string    `json:"status"`
	ResponseStatus *int      `json:"response_status"`
	Error          *string   `json:"error"`
	At             time.Time `json:"at"`
}

type nextAttempt struct {
	ID      string    `json:"id"`
	Number  int       `json:"number"`
	Trigger string    `json:"trigger"`
	Due     time.Time `json:"due"`
}

// auditReport is what audit prints.
type auditReport struct {
	Subject    string          `json:"subject"`
	AsOf       *time.Time      `json:"as_of"`
	Deliveries []deliveryState `json:"deliveries"`
	Events     []auditEvent    `json:"events"`
}

// buildAudit gathers the causal history of an attempt, a delivery or an
// event: the event's stream and every delivery stream involved, in commit
// order, and each delivery's state folded from them.
func buildAudit(ctx context.Context, db eventstore.DBTX, req auditRequest) (auditReport, error) {
	rep := auditReport{Subject: req.kind + " " + req.id, AsOf: req.asOf, Deliveries: []deliveryState{}, Events: []auditEvent{}}
	store := eventstore.New(nil)
	deliveries, err := auditDeliveries(ctx, db, req)
	if err != nil {
		return rep, err
	}
	eventID := ""
	if req.kind == "event" {
		eventID = req.id
	}
	streams, err := store.LoadMany(ctx, db, deliveries)
	if err != nil {
		return rep, err
	}
	for _, d := range deliveries {
		if len(streams[d]) == 0 || streams[d][0].StreamType != domain.StreamDelivery {
			return rep, fmt.Errorf("audit: no delivery %q", d)
		}
		var first domain.DeliveryRequested
		if err := json.Unmarshal(streams[d][0].Payload, &first); err == nil && eventID == "" {
			eventID = first.EventID
		}
	}
	var all []eventstore.Event
	if eventID != "" {
		evs, err := store.Load(ctx, db, eventID)
		if err != nil {
			return rep, err
		}
		if req.kind == "event" && (len(evs) == 0 || evs[0].StreamType != domain.StreamEvent) {
			return rep, fmt.Errorf("audit: no event %q", req.id)
		}
		all = append(all, evs...)
	}
	for _, d := range deliveries {
		all = append(all, streams[d]...)
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i].Position(), all[j].Position()
		return a.TransactionID < b.TransactionID || (a.TransactionID == b.TransactionID && a.GlobalPosition < b.GlobalPosition)
	})
	for _, e := range all {
		if req.asOf != nil && e.RecordedAt.After(*req.asOf) {
			continue
		}
		var payload map[string]any
		if err := json.Unmarshal(e.Payload, &payload); err != nil {
			payload = map[string]any{"unreadable_payload": err.Error()}
		}
		delete(payload, "body_b64")
		rep.Events = append(rep.Events, auditEvent{Time: e.RecordedAt.UTC(), Position: e.GlobalPosition, StreamType: e.StreamType, StreamID: e.StreamID,
			Version: e.StreamVersion, Type: e.Type, Actor: e.Metadata.Actor, CorrelationID: e.Metadata.CorrelationID,
			CausationID: e.Metadata.CausationID, RequestID: e.Metadata.RequestID, Summary: summarize(e), Payload: payload})
	}
	for _, d := range deliveries {
		st, ok, err := foldDelivery(streams[d], req.asOf)
		if err != nil {
			return rep, err
		}
		if ok {
			rep.Deliveries = append(rep.Deliveries, st)
		}
	}
	return rep, nil
}

// foldDelivery folds a delivery stream up to asOf (false when it did not exist yet).
func foldDelivery(evs []eventstore.Event, asOf *time.Time) (deliveryState, bool, error) {
	agg := &domain.Delivery{}
	var st deliveryState
	for _, e := range evs {
		if asOf != nil && e.RecordedAt.After(*asOf) {
			break
		}
		if err := agg.Apply(e.StreamVersion, e.Type, e.Payload); err != nil {
			return st, false, err
		}
		if e.Type == domain.EvDeliveryAttempted {
			var a domain.DeliveryAttempted
			if err := json.Unmarshal(e.Payload, &a); err != nil {
				return st, false, err
			}
			st.Attempts++
			st.LastAttempt = &attemptOutcome{ID: a.AttemptID, Number: a.AttemptNumber, Trigger: a.TriggerType, Status: a.Status,
				ResponseStatus: a.ResponseStatus, Error: a.Error, At: a.StartedAt.UTC()}
		}
	}
	if agg.Version() == 0 {
		return st, false, nil
	}
	r := agg.Requested()
	st.DeliveryID, st.EventID, st.Version = r.DeliveryID, r.EventID, agg.Version()
	st.DestinationID, st.DestinationName, st.ConnectionID, st.ConnectionName = r.DestinationID, r.DestinationName, r.ConnectionID, r.ConnectionName
	if n := agg.Next(); n != nil {
		st.NextAttempt = &nextAttempt{ID: n.ID, Number: n.Number, Trigger: n.Trigger, Due: n.Due.UTC()}
	}
	switch agg.Terminal() {
	case domain.AttemptSuccess:
		st.Status = "delivered"
	case "dlq":
		st.Status = "dead_lettered"
	case domain.AttemptFailed:
		st.Status = "failed"
	default:
		switch {
		case st.NextAttempt == nil:
			st.Status = "failed"
		case st.NextAttempt.Trigger == domain.TriggerRetry:
			st.Status = "retry_scheduled"
		case st.NextAttempt.Trigger == domain.TriggerManual:
			st.Status = "manual_retry_pending"
		default:
			st.Status = "pending"
		}
	}
	return st, true, nil
}

func writeAudit(ctx context.Context, db eventstore.DBTX, req auditRequest, w io.Writer) error {
	rep, err := buildAudit(ctx, db, req)
	if err != nil {
		return err
	}
	if req.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	title := "Audit of " + rep.Subject
	if rep.AsOf != nil {
		title += " as of " + rep.AsOf.Format(time.RFC3339Nano)
	}
	fmt.Fprintf(w, "%s\n\n", title)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DELIVERY\tDESTINATION\tCONNECTION\tSTATE\tATTEMPTS\tLAST ATTEMPT\tNEXT")
	for _, d := range rep.Deliveries {
		last, next := "-", "-"
		if a := d.LastAttempt; a != nil {
			last = fmt.Sprintf("#%d %s %s at %s", a.Number, a.Trigger, outcome(a.Status, a.ResponseStatus, a.Error), a.At.Format(timeFmt))
		}
		if n := d.NextAttempt; n != nil {
			next = fmt.Sprintf("#%d %s due %s", n.Number, n.Trigger, n.Due.Format(timeFmt))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.DeliveryID, named(d.DestinationName, d.DestinationID), named(d.ConnectionName, d.ConnectionID),
			d.Status, d.Attempts, last, next)
	}
	if len(rep.Deliveries) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nHistory (%d events, commit order):\n", len(rep.Events))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME (UTC)\tSTREAM\tVER\tTYPE\tACTOR\tCORRELATION\tCAUSATION\tREQUEST\tDETAILS")
	for _, e := range rep.Events {
		fmt.Fprintf(tw, "%s\t%s/%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Format(timeFmt), e.StreamType, short(e.StreamID), e.Version, e.Type,
			orDash(e.Actor), short(e.CorrelationID), short(e.CausationID), orDash(e.RequestID), e.Summary)
	}
	return tw.Flush()
}

// queryStrings returns a one-column query's rows.
func queryStrings(ctx context.Context, db eventstore.DBTX, sql string, args ...any) ([]string, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// auditDeliveries are the delivery streams an audit covers: an attempt's
// delivery, the delivery named, or every delivery of an event, found in the
// read models and, when they have not caught up, in the log itself.
func auditDeliveries(ctx context.Context, db eventstore.DBTX, req auditRequest) ([]string, error) {
	var deliveries []string
	switch req.kind {
	case "attempt":
		var d string
		err := db.QueryRow(ctx, `SELECT delivery_id FROM delivery_attempts WHERE id = $1`, req.id).Scan(&d)
		if errors.Is(err, pgx.ErrNoRows) {
			// Not projected (yet): the log itself names every attempt id.
			err = db.QueryRow(ctx, `SELECT stream_id FROM events WHERE stream_type = $2
				AND (payload->>'attempt_id' = $1 OR payload->>'next_attempt_id' = $1) LIMIT 1`, req.id, domain.StreamDelivery).Scan(&d)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("audit: no attempt %q", req.id)
		}
		if err != nil {
			return nil, err
		}
		return []string{d}, nil
	case "delivery":
		return []string{req.id}, nil
	case "event":
		var err error
		if deliveries, err = queryStrings(ctx, db, `SELECT delivery_id FROM delivery_jobs WHERE event_id = $1
			UNION SELECT delivery_id FROM delivery_attempts WHERE event_id = $1 ORDER BY 1`, req.id); err != nil {
			return nil, err
		}
		if len(deliveries) == 0 {
			// No job rows (an event no connection matched, or lost scheduler
			// state): the log names the event's deliveries itself.
			if deliveries, err = queryStrings(ctx, db, `SELECT stream_id FROM events WHERE event_type = $2 AND payload->>'event_id' = $1
				ORDER BY global_position`, req.id, domain.EvDeliveryRequested); err != nil {
				return nil, err
			}
		}
	}
	return deliveries, nil
}
