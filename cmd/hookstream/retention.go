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

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/retention"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/kit"
)

const retentionUsage = `hookstream retention status [--json]
  hookstream retention run [--archive-dir DIR] [--json]
  hookstream retention set --env ID [--days N] [--history-days N] [--archive true|false] [--ingest-rate-limit N]

Webhook bodies and headers are kept for the environment's retention (default
30 days, also PATCH /v1/environments/{id} payload_retention_days), then
removed; the event log keeps every event's ids, sizes and a hash of each
body. With a history retention (--history-days, history_retention_days;
default none: kept forever), a finished webhook is removed whole once its
newest event is that old: its event, deliveries and attempts, from the log
and the lists (archived first when the environment archives). serve runs a
pass every --retention-interval (one process at a time); run makes one now.
status shows each environment's settings, its oldest payload and webhook
still kept and what was removed so far.

Examples:
  hookstream retention status
  hookstream retention set --env 0190… --days 7 --archive true
  hookstream retention set --env 0190… --history-days 90
  hookstream retention run --archive-dir /var/lib/hookstream/archive --json`

func cmdRetention(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		return usageError{"retention: want status, run or set", retentionUsage}
	}
	if isHelp(args[0]) {
		return helpRequest{retentionUsage}
	}
	sub := args[0]
	fs := flag.NewFlagSet("retention "+sub, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	archiveDir := fs.String("archive-dir", envOr("HOOKSTREAM_ARCHIVE_DIR", ""), "where archiving environments write their NDJSON (HOOKSTREAM_ARCHIVE_DIR)")
	env := fs.String("env", "", "the environment to configure (set)")
	days := fs.Float64("days", 0, "payload retention in days (fractions allowed, at least 60 s)")
	historyDays := fs.Float64("history-days", 0, "history retention in days: finished webhooks are removed whole after it (0: kept forever)")
	archive := fs.String("archive", "", "archive payloads before they expire: true or false")
	rate := fs.Int("ingest-rate-limit", -1, "the environment's ingest limit, webhooks/s (0: none)")
	switch sub {
	case "status", "run", "set":
	default:
		return usageError{fmt.Sprintf("retention: unknown subcommand %q", sub), retentionUsage}
	}
	pos, err := parseFlags(fs, args[1:], retentionUsage)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Sprintf("retention %s: unexpected argument %q", sub, pos[0]), retentionUsage}
	}
	if sub == "set" && *env == "" {
		return usageError{"retention set: --env is required", retentionUsage}
	}
	var in tenancy.EnvironmentInput
	if sub == "set" {
		if *days != 0 {
			in.PayloadRetentionDays = days
		}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "history-days" {
				in.HistoryRetentionDays = historyDays // validated with the API's rules (a negative one is refused)
			}
		})
		switch *archive {
		case "":
		case "true", "false":
			f := kit.Flag(*archive == "true")
			in.ArchivePayloads = &f
		default:
			return usageError{"retention set: --archive must be true or false", retentionUsage}
		}
		if *rate >= 0 {
			in.IngestRateLimit = rate
		}
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	switch sub {
	case "set":
		var org string
		if err := db.Pool.QueryRow(ctx, `SELECT org_id FROM environments WHERE id = $1`, *env).Scan(&org); err != nil {
			return fmt.Errorf("retention set: no environment %q", *env)
		}
		e, err := tenancy.NewAccounts(db.Pool, nil).UpdateEnvironment(ctx, domain.Tenant{OrgID: org, EnvID: *env, Actor: "cli"}, *env, in, time.Now())
		if err != nil {
			return fmt.Errorf("retention set: %s", domain.ErrorMessage(err))
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]any{"environment": e})
		}
		limit := "none"
		if e.IngestRateLimit != nil {
			limit = fmt.Sprintf("%d/s", *e.IngestRateLimit)
		}
		history := "forever"
		if e.HistoryRetentionDays != nil {
			history = time.Duration(*e.HistoryRetentionDays * float64(24*time.Hour)).Round(time.Second).String()
		}
		_, err = fmt.Fprintf(stdout, "environment %s: payloads kept %s, history kept %s, archived first: %v, ingest limit %s\n", e.ID,
			time.Duration(e.PayloadRetentionDays*float64(24*time.Hour)).Round(time.Second), history, e.ArchivePayloads == 1, limit)
		return err
	case "run":
		rep, err := retention.New(retention.Params{Pool: db.Pool, Store: eventstore.New(nil), Log: log, ArchiveDir: *archiveDir}).Run(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(rep)
		}
		if !rep.Ran {
			_, err := fmt.Fprintln(stdout, "another process is running a retention pass; nothing done")
			return err
		}
		for _, e := range rep.Envs {
			fmt.Fprintf(stdout, "environment %s: %d webhook and %d attempt payloads expired (recorded before %s), %d bytes reclaimed\n",
				e.EnvID, e.Events, e.Attempts, e.Before.Format(time.RFC3339), e.Bytes)
			if e.Held != "" {
				fmt.Fprintf(stdout, "  held: %s\n", e.Held)
			}
			if e.HistoryBefore != nil {
				fmt.Fprintf(stdout, "  history: %d webhooks removed whole (%d deliveries, %d events of the log; received before %s), %d held\n",
					e.Webhooks, e.Deliveries, e.LogRows, e.HistoryBefore.Format(time.RFC3339), e.WebhooksHeld)
			}
			if e.HistoryHeld != "" {
				fmt.Fprintf(stdout, "  history held: %s\n", e.HistoryHeld)
			}
		}
		return nil
	}
	st, err := retention.Status(ctx, db.Pool)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"environments": st})
	}
	tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "ENVIRONMENT\tNAME\tRETENTION\tARCHIVE\tOLDEST PAYLOAD\tEXPIRED (EVENTS/ATTEMPTS)\tRECLAIMED\tHISTORY\tOLDEST WEBHOOK\tREMOVED (WEBHOOKS)\tLAST PASS")
	for _, s := range st {
		oldest, last := "-", "never"
		if s.OldestPayloadAt != nil {
			oldest = time.Since(*s.OldestPayloadAt).Round(time.Second).String() + " old"
		}
		if s.LastRun != nil {
			last = s.LastRun.UTC().Format(time.RFC3339)
		}
		history, oldestEvent := "forever", "-"
		if s.HistoryRetentionSeconds != nil {
			history = (time.Duration(*s.HistoryRetentionSeconds) * time.Second).String()
			if s.OldestEventAt != nil {
				oldestEvent = time.Since(*s.OldestEventAt).Round(time.Second).String() + " old"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%d/%d\t%d B\t%s\t%s\t%d\t%s\n", s.EnvID, s.Name, (time.Duration(s.RetentionSeconds) * time.Second).String(),
			s.ArchivePayloads, oldest, s.EventsExpired, s.AttemptsExpired, s.BytesReclaimed, history, oldestEvent, s.WebhooksRemoved, last)
	}
	return tw.Flush()
}
