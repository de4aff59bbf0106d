package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/audit"
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

func writeAudit(ctx context.Context, db eventstore.DBTX, req auditRequest, w io.Writer) error {
	rep, err := audit.Build(ctx, db, audit.Request{Kind: req.kind, ID: req.id, AsOf: req.asOf})
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
			last = fmt.Sprintf("#%d %s %s at %s", a.Number, a.Trigger, audit.Outcome(a.Status, a.ResponseStatus, a.Error), a.At.Format(audit.TimeFmt))
		}
		if n := d.NextAttempt; n != nil {
			next = fmt.Sprintf("#%d %s due %s", n.Number, n.Trigger, n.Due.Format(audit.TimeFmt))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.DeliveryID, audit.Named(d.DestinationName, d.DestinationID), audit.Named(d.ConnectionName, d.ConnectionID),
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
		fmt.Fprintf(tw, "%s\t%s/%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Format(audit.TimeFmt), e.StreamType, audit.Short(e.StreamID), e.Version, e.Type,
			orDash(e.Actor), audit.Short(e.CorrelationID), audit.Short(e.CausationID), orDash(e.RequestID), e.Summary)
	}
	return tw.Flush()
}
