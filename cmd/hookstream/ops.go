package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/audit"
	"github.com/hookstream/hookstream/handlers/redeliver"
	"github.com/hookstream/hookstream/migrations"
	"github.com/hookstream/hookstream/projections"
)

// usageError is a command-line mistake: printed with the command's usage, exit 2.
type usageError struct{ msg, usage string }

func (e usageError) Error() string { return e.msg + "\n\nUsage:\n  " + e.usage }

// helpRequest is -h, --help or help where a command or subcommand was
// expected: its usage goes to stdout and the exit status is 0.
type helpRequest struct{ usage string }

func (helpRequest) Error() string { return "help requested" }

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// parseFlags parses args allowing flags after positional arguments, and
// returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string, usage string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, helpRequest{usage}
			}
			return nil, usageError{err.Error(), usage}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// openMigrated opens the database (the project-local one without
// DATABASE_URL) and applies pending migrations.
func openMigrated(ctx context.Context, log *slog.Logger) (*database, error) {
	db, err := openDatabase(ctx, log, 4)
	if err != nil {
		return nil, err
	}
	if _, err := migrations.Apply(ctx, db.Pool); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// ---- projections ----

const projectionsUsage = `hookstream projections status [--json]
  hookstream projections rebuild NAME|--all [--json] [--event-at-a-time]

Read models: delivery_attempts, events, scheduler, replays.

Examples:
  hookstream projections status
  hookstream projections rebuild delivery_attempts
  hookstream projections rebuild --all --json`

func cmdProjections(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		return usageError{"projections: want a subcommand", projectionsUsage}
	}
	fs := flag.NewFlagSet("projections", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	all := fs.Bool("all", false, "rebuild every projection")
	slow := fs.Bool("event-at-a-time", false, "rebuild through the live projection code, one event at a time (slow; the reference path)")
	pos, err := parseFlags(fs, args[1:], projectionsUsage)
	if err != nil {
		return err
	}
	switch args[0] {
	case "status":
		if len(pos) != 0 {
			return usageError{"projections status takes no arguments", projectionsUsage}
		}
		return projectionsStatus(ctx, stdout, *asJSON, log)
	case "rebuild":
		var names []string
		switch {
		case *all && len(pos) == 0:
			names = projections.Rebuildable()
		case !*all && len(pos) == 1:
			names = pos
		default:
			return usageError{"projections rebuild: name one projection or pass --all (known: " + strings.Join(projections.Rebuildable(), ", ") + ")", projectionsUsage}
		}
		for _, n := range names {
			if !contains(projections.Rebuildable(), n) {
				return usageError{fmt.Sprintf("projections rebuild: unknown projection %q (known: %s)", n, strings.Join(projections.Rebuildable(), ", ")), projectionsUsage}
			}
		}
		return rebuildProjections(ctx, names, *slow, *asJSON, stdout, stderr, log)
	}
	if isHelp(args[0]) {
		return helpRequest{projectionsUsage}
	}
	return usageError{fmt.Sprintf("projections: unknown subcommand %q", args[0]), projectionsUsage}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// progressBar draws a rebuild's progress on a terminal, or logs each phase
// change otherwise.
type progressBar struct {
	w     io.Writer
	name  string
	tty   bool
	phase string
	last  time.Time
}

func newProgressBar(w io.Writer, name string) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, name: name, tty: tty}
}

func (b *progressBar) update(p projections.Progress) {
	if !b.tty {
		if p.Phase != b.phase {
			b.phase = p.Phase
			fmt.Fprintf(b.w, "rebuild %s: %s\n", b.name, p.Phase)
		}
		return
	}
	if p.Phase == b.phase && time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.phase, b.last = p.Phase, time.Now()
	line := fmt.Sprintf("%-18s %-9s", b.name, p.Phase)
	if p.Total > 0 {
		const width = 30
		filled := int(float64(width) * float64(p.Done) / float64(p.Total))
		line += fmt.Sprintf(" [%s%s] %d/%d events", strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.Done, p.Total)
	}
	fmt.Fprintf(b.w, "\r\033[K%s", line)
}

func (b *progressBar) done() {
	if b.tty {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

// ---- replay ----

const replayUsage = `hookstream replay --destination ID --from TIME --to TIME [--source ID] [--connection ID]
                    [--rate-limit N] [--max-events N] [--wait] [--json]
  hookstream replay status ID [--wait] [--json]
  hookstream replay cancel ID [--json]

A running replay releases its events in batches, one per second; cancel stops
the next batches (the deliveries already released, at most one batch, still
go out). While its deliveries are held (destination or connection paused,
circuit open), status says why on a "waiting:" line.

Examples:
  hookstream replay --destination 0190… --from 2026-03-01T00:00:00Z --to 2026-03-02T00:00:00Z --rate-limit 20 --wait
  hookstream replay status 0190… --json
  hookstream replay cancel 0190…`

func cmdReplay(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	dest := fs.String("destination", "", "destination to re-deliver to (required)")
	source := fs.String("source", "", "only this source's events")
	conn := fs.String("connection", "", "the connection to show on the replayed attempts")
	from := fs.String("from", "", "start of the time range, RFC 3339 (required)")
	to := fs.String("to", "", "end of the time range, RFC 3339 (required)")
	rate := fs.Int("rate-limit", domain.ReplayDefaultRate, "events per second, 1-100")
	maxEvents := fs.Int("max-events", domain.ReplayDefaultMaxEvents, "at most this many events, 1-10000")
	wait := fs.Bool("wait", false, "follow the job's progress until it ends (the engine, `hookstream serve`, runs it)")
	asJSON := fs.Bool("json", false, "print the job as JSON")
	rest, sub := args, ""
	if len(args) > 0 && (args[0] == "status" || args[0] == "cancel") {
		rest, sub = args[1:], args[0]
	}
	status := sub != ""
	pos, err := parseFlags(fs, rest, replayUsage)
	if err != nil {
		return err
	}
	if status && len(pos) != 1 {
		return usageError{"replay " + sub + ": want one job id", replayUsage}
	}
	if !status && len(pos) != 0 {
		return usageError{fmt.Sprintf("replay: unexpected argument %q", pos[0]), replayUsage}
	}
	if !status && *dest == "" {
		return usageError{"replay: --destination is required", replayUsage}
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	svc := handlers.NewService(handlers.ServiceParams{Pool: db.Pool, Log: log})
	defer svc.Close()
	var job redeliver.ReplayJob
	var tenant domain.Tenant
	if status {
		job, tenant, err = replayStatus(ctx, db, svc, pos[0])
		if err == nil && sub == "cancel" {
			if job, err = svc.CancelReplay(ctx, tenant, job.ID, "cli"); err != nil {
				return fmt.Errorf("replay cancel: %s", domain.ErrorMessage(err))
			}
		}
	} else {
		in := redeliver.ReplayInput{DestinationID: dest, From: from, To: to, RateLimit: rate, MaxEvents: maxEvents}
		if *source != "" {
			in.SourceID = source
		}
		if *conn != "" {
			in.ConnectionID = conn
		}
		job, tenant, err = createReplay(ctx, svc, in)
	}
	if err != nil {
		return err
	}
	printJob := func(j redeliver.ReplayJob) error {
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]any{"job": j})
		}
		_, err := fmt.Fprintf(stdout, "replay %s: %s, %d/%d processed (%d succeeded, %d failed), %d released, %d/s to destination %s\n",
			j.ID, j.Status, j.Processed, j.Total, j.Succeeded, j.Failed, j.Released, j.RateLimit, j.DestinationID)
		if err == nil && j.Skipped > 0 {
			_, err = fmt.Fprintf(stdout, "  skipped: %d (history retention removed them before their batch was released)\n", j.Skipped)
		}
		if err == nil && j.Waiting != nil {
			_, err = fmt.Fprintf(stdout, "  waiting: %s\n", *j.Waiting)
		}
		return err
	}
	if !*wait {
		return printJob(job)
	}
	return followReplay(ctx, svc, tenant, job, *asJSON, stderr, printJob)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ---- events ----

func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, fmt.Errorf("%s is required", name)
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %q is not an RFC 3339 time such as 2026-03-01T14:30:00Z", name, v)
	}
	return t.UTC(), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// replayStatus loads a replay job with the tenant it belongs to.
func replayStatus(ctx context.Context, db *database, svc *handlers.Service, id string) (redeliver.ReplayJob, domain.Tenant, error) {
	var dest string
	var tenant domain.Tenant
	if err := db.Pool.QueryRow(ctx, `SELECT destination_id FROM replay_jobs WHERE id = $1`, id).Scan(&dest); err != nil {
		return redeliver.ReplayJob{}, tenant, fmt.Errorf("replay status: no replay job %q", id)
	}
	tenant, err := svc.ReplayTenant(ctx, dest, "cli")
	if err != nil {
		// The destination was deleted since: the job row still names its tenant.
		if err := db.Pool.QueryRow(ctx, `SELECT org_id, env_id FROM replay_jobs WHERE id = $1`, id).Scan(&tenant.OrgID, &tenant.EnvID); err != nil {
			return redeliver.ReplayJob{}, tenant, err
		}
	}
	job, err := svc.GetReplay(ctx, tenant, id)
	return job, tenant, err
}

// createReplay starts a replay as the destination's tenant.
func createReplay(ctx context.Context, svc *handlers.Service, in redeliver.ReplayInput) (redeliver.ReplayJob, domain.Tenant, error) {
	tenant, err := svc.ReplayTenant(ctx, *in.DestinationID, "cli")
	if err != nil {
		return redeliver.ReplayJob{}, tenant, fmt.Errorf("replay: %s", domain.ErrorMessage(err))
	}
	job, err := svc.CreateReplay(ctx, tenant, in, "cli")
	if err != nil {
		return job, tenant, fmt.Errorf("replay: %s", domain.ErrorMessage(err))
	}
	return job, tenant, nil
}

// followReplay prints a replay's progress on stderr until it ends, then the
// job; a failed replay is an error.
func followReplay(ctx context.Context, svc *handlers.Service, tenant domain.Tenant, job redeliver.ReplayJob, asJSON bool, stderr io.Writer,
	printJob func(redeliver.ReplayJob) error) error {
	var err error
	last := ""
	for {
		line := fmt.Sprintf("%s %d/%d processed", job.Status, job.Processed, job.Total)
		if job.Waiting != nil {
			line += "; waiting: " + *job.Waiting
		}
		if line != last && !asJSON {
			fmt.Fprintf(stderr, "replay %s: %s\n", job.ID, line)
			last = line
		}
		if job.Done() {
			if err := printJob(job); err != nil {
				return err
			}
			if job.Status == "failed" {
				return fmt.Errorf("replay %s failed: %s", job.ID, deref(job.Error))
			}
			if job.Status == "cancelled" {
				return fmt.Errorf("replay %s was cancelled after %d of %d events were released", job.ID, job.Released, job.Total)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if job, err = svc.GetReplay(ctx, tenant, job.ID); err != nil {
			return err
		}
	}
}

// projectionsStatus prints each consumer group's checkpoint, lag and last error.
func projectionsStatus(ctx context.Context, stdout io.Writer, asJSON bool, log *slog.Logger) error {
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := projections.Status(ctx, db.Pool, time.Now())
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"groups": st})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tCHECKPOINT\tLAG (EVENTS)\tLAG (S)\tLAST ERROR")
	for _, g := range st {
		lastErr := "-"
		if g.LastError != nil {
			lastErr = fmt.Sprintf("%s (%s, %d failures)", audit.OneLine(*g.LastError, 100), g.ErrorAt.UTC().Format(time.RFC3339), g.Failures)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%s\n", g.Group, g.Position, g.LagEvents, g.LagSeconds, lastErr)
	}
	return tw.Flush()
}

// rebuildProjections rebuilds the named projections, one after another, with
// a progress bar on stderr.
func rebuildProjections(ctx context.Context, names []string, slow, asJSON bool, stdout, stderr io.Writer, log *slog.Logger) error {
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, n := range names {
		bar := newProgressBar(stderr, n)
		res, err := projections.Rebuild(ctx, db.Pool, n, projections.RebuildOptions{Progress: bar.update, EventAtATime: slow})
		bar.done()
		if err != nil {
			return err
		}
		if asJSON {
			if err := json.NewEncoder(stdout).Encode(res); err != nil {
				return err
			}
			continue
		}
		rate := float64(res.Events) / max(res.Duration.Seconds(), 1e-9)
		fmt.Fprintf(stdout, "rebuilt %s: %d events read in %s (%.0f events/s), %d rows, %d caught up after the build",
			n, res.Events, res.Duration.Round(time.Millisecond), rate, res.Rows, res.CaughtUp)
		if n == "scheduler" {
			fmt.Fprintf(stdout, ", %d job rows repaired", res.Repaired)
		}
		fmt.Fprintln(stdout)
	}
	return nil
}

// ---- send-test ----

const sendTestUsage = `hookstream send-test --destination ID [--connection ID] [--payload JSON] [--no-wait] [--json]

Sends a sample webhook to one destination through the normal pipeline (the
running "hookstream serve" delivers it: signing, circuit breaker, retries and
dead letter as for any webhook) and prints its first attempt. Exit 1 when the
attempt failed, or when no engine picked the test up within 5 s.

Examples:
  hookstream send-test --destination 0190…
  hookstream send-test --destination 0190… --payload '{"type":"order.created","id":42}' --json`

func cmdSendTest(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("send-test", flag.ContinueOnError)
	dest := fs.String("destination", "", "the destination to test (required)")
	conn := fs.String("connection", "", "the connection the test comes through (default: the destination's oldest)")
	payload := fs.String("payload", "", "the JSON body to send (default: a hookstream.test event)")
	noWait := fs.Bool("no-wait", false, "print the pending attempt instead of waiting for its outcome")
	asJSON := fs.Bool("json", false, "print {event_id, delivery_id, delivery_attempt} as JSON")
	pos, err := parseFlags(fs, args, sendTestUsage)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Sprintf("send-test: unexpected argument %q", pos[0]), sendTestUsage}
	}
	if *dest == "" {
		return usageError{"send-test: --destination is required", sendTestUsage}
	}
	in := redeliver.SendTestInput{}
	if *payload != "" {
		if !json.Valid([]byte(*payload)) {
			return usageError{"send-test: --payload is not JSON", sendTestUsage}
		}
		in.Payload = json.RawMessage(*payload)
	}
	if *conn != "" {
		in.ConnectionID = conn
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	svc := handlers.NewService(handlers.ServiceParams{Pool: db.Pool, Log: log})
	defer svc.Close()
	tenant, err := svc.ReplayTenant(ctx, *dest, "cli")
	if err != nil {
		return fmt.Errorf("send-test: %s", domain.ErrorMessage(err))
	}
	res, err := svc.SendTest(ctx, tenant, *dest, in, !*noWait, "cli")
	if err != nil {
		if res.EventID != "" {
			return fmt.Errorf("send-test: test event %s stored, but no engine recorded its attempt within 5 s: is `hookstream serve` running on this database? It is delivered once one runs", res.EventID)
		}
		return fmt.Errorf("send-test: %s", domain.ErrorMessage(err))
	}
	a := res.DeliveryAttempt
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(res); err != nil {
			return err
		}
	} else {
		line := fmt.Sprintf("test event %s → destination %s: %s", res.EventID, a.DestinationID, a.Status)
		if a.ResponseStatus != nil {
			line += fmt.Sprintf(" (HTTP %d", *a.ResponseStatus)
			if a.DurationMS != nil {
				line += fmt.Sprintf(" in %d ms", *a.DurationMS)
			}
			line += ")"
		}
		if a.Error != nil {
			line += ": " + *a.Error
		}
		fmt.Fprintf(stdout, "%s\n  attempt %s, delivery %s\n", line, a.ID, res.DeliveryID)
	}
	if a.Status == domain.AttemptFailed {
		return exitCode(1)
	}
	return nil
}
