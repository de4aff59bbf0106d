package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/audit"
)

const eventsUsage = `hookstream events tail [--type T[,T…]] [--stream ID] [-n N] [--follow] [--json]
  hookstream events stream ID [--json]
  hookstream events export --from TIME --to TIME [--type T[,T…]] [--out FILE]

Examples:
  hookstream events tail -n 20 --type DeliveryAttempted,MovedToDLQ
  hookstream events tail --follow --json | jq .event_type
  hookstream events stream 0190…            # one stream (event, delivery, replay…) in order
  hookstream events export --from 2026-03-01T00:00:00Z --to 2026-03-02T00:00:00Z --out day.ndjson`

func cmdEvents(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		return usageError{"events: want a subcommand", eventsUsage}
	}
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	types := fs.String("type", "", "only these event types, comma-separated")
	stream := fs.String("stream", "", "only this stream")
	n := fs.Int("n", 20, "tail: how many recent events to show first")
	follow := fs.Bool("follow", false, "tail: keep printing events as they commit")
	asJSON := fs.Bool("json", false, "print NDJSON, one stored event per line")
	from := fs.String("from", "", "export: start (inclusive), RFC 3339")
	to := fs.String("to", "", "export: end (exclusive), RFC 3339")
	out := fs.String("out", "", "export: write to this file instead of stdout")
	pos, err := parseFlags(fs, args[1:], eventsUsage)
	if err != nil {
		return err
	}
	var typeList []string
	for _, t := range strings.Split(*types, ",") {
		if t = strings.TrimSpace(t); t != "" {
			if !slices.Contains(domain.EventTypes, t) {
				// A misspelt type would match nothing and print nothing.
				return usageError{fmt.Sprintf("events: unknown event type %q; known: %s", t, strings.Join(domain.EventTypes, ", ")), eventsUsage}
			}
			typeList = append(typeList, t)
		}
	}
	switch args[0] {
	case "tail":
		if len(pos) != 0 || *n < 0 {
			return usageError{"events tail: takes flags only, -n at least 0", eventsUsage}
		}
	case "stream":
		if len(pos) != 1 {
			return usageError{"events stream: want one stream id", eventsUsage}
		}
	case "export":
		if len(pos) != 0 {
			return usageError{"events export: takes flags only", eventsUsage}
		}
	default:
		if isHelp(args[0]) {
			return helpRequest{eventsUsage}
		}
		return usageError{fmt.Sprintf("events: unknown subcommand %q", args[0]), eventsUsage}
	}
	var fromT, toT time.Time
	if args[0] == "export" {
		if fromT, err = parseTime("--from", *from); err == nil {
			toT, err = parseTime("--to", *to)
		}
		if err != nil {
			return usageError{"events export: " + err.Error(), eventsUsage}
		}
		if !fromT.Before(toT) {
			return usageError{"events export: --from must be before --to", eventsUsage}
		}
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	pr := newEventPrinter(stdout, *asJSON)
	switch args[0] {
	case "stream":
		return eventsStream(ctx, db, pr, pos[0])
	case "export":
		return eventsExport(ctx, db, stdout, *out, fromT, toT, typeList, log)
	}
	return eventsTail(ctx, db, pr, eventstore.RangeQuery{Types: typeList, StreamID: *stream, Limit: *n, UntilTx: -1}, *follow)
}

// eventsStream prints one stream.
func eventsStream(ctx context.Context, db *database, pr *eventPrinter, id string) error {
	evs, err := eventstore.New(nil).Load(ctx, db.Pool, id)
	if err != nil {
		return err
	}
	if len(evs) == 0 {
		return fmt.Errorf("events stream: no stream %q", id)
	}
	for _, e := range evs {
		pr.print(e)
	}
	return pr.flush()
}

// eventsExport writes the events of [from, to) as NDJSON to out (stdout when empty).
func eventsExport(ctx context.Context, db *database, stdout io.Writer, out string, from, to time.Time, types []string, log *slog.Logger) error {
	w := stdout
	var f *os.File
	if out != "" {
		var err error
		if f, err = os.Create(out); err != nil {
			return err
		}
		defer f.Close() // after a failure; the success path closes it and reports
		w = f
	}
	started := time.Now()
	count, err := eventstore.Export(ctx, db.Pool, from, to, types, w)
	if err != nil {
		return err
	}
	if f != nil {
		if err := f.Close(); err != nil {
			return fmt.Errorf("events export: write %s: %w", out, err)
		}
	}
	log.Info("exported", "events", count, "seconds", time.Since(started).Seconds())
	return nil
}

// eventsTail prints the last q.Limit events, then, with follow, every event
// as it commits until ctx ends.
func eventsTail(ctx context.Context, db *database, pr *eventPrinter, q eventstore.RangeQuery, follow bool) error {
	evs, err := eventstore.ReadLast(ctx, db.Pool, q)
	if err != nil {
		return err
	}
	var cursor eventstore.Position
	if len(evs) > 0 {
		cursor = evs[len(evs)-1].Position()
	} else if err := db.Pool.QueryRow(ctx, `SELECT coalesce(max(transaction_id::text::bigint), 0), coalesce(max(global_position), 0) FROM events
		WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())`).Scan(&cursor.TransactionID, &cursor.GlobalPosition); err != nil {
		return err
	}
	for _, e := range evs {
		pr.print(e)
	}
	if err := pr.flush(); err != nil || !follow {
		return err
	}
	for {
		q.After, q.Limit = cursor, 500
		evs, err := eventstore.ReadRange(ctx, db.Pool, q)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, e := range evs {
			pr.print(e)
			cursor = e.Position()
		}
		if err := pr.flush(); err != nil {
			return err
		}
		if len(evs) == 500 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil // Ctrl-C ends a follow
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// eventPrinter prints stored events as aligned lines or NDJSON.
type eventPrinter struct {
	json bool
	enc  *json.Encoder
	tw   *tabwriter.Writer
}

func newEventPrinter(w io.Writer, asJSON bool) *eventPrinter {
	return &eventPrinter{json: asJSON, enc: json.NewEncoder(w), tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (p *eventPrinter) print(e eventstore.Event) {
	if p.json {
		meta, err := json.Marshal(e.Metadata)
		if err != nil {
			meta = []byte("null") // a metadata struct of strings always encodes
		}
		_ = p.enc.Encode(eventstore.ExportLine{GlobalPosition: e.GlobalPosition, EventID: e.EventID.String(), StreamType: e.StreamType,
			StreamID: e.StreamID, StreamVersion: e.StreamVersion, Type: e.Type, SchemaVersion: e.SchemaVersion, OrgID: e.OrgID, EnvID: e.EnvID,
			RecordedAt: e.RecordedAt.UTC(), Metadata: meta, Payload: e.Payload})
		return
	}
	fmt.Fprintf(p.tw, "%d\t%s\t%s/%s\tv%d\t%s\t%s\t%s\n", e.GlobalPosition, e.RecordedAt.UTC().Format("2006-01-02 15:04:05.000"),
		e.StreamType, e.StreamID, e.StreamVersion, e.Type, orDash(e.Metadata.Actor), audit.Summarize(e))
}

func (p *eventPrinter) flush() error {
	if p.json {
		return nil
	}
	return p.tw.Flush()
}
