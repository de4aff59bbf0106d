// Command hookstream is the event-sourced webhook delivery engine: one binary
// with subcommands. Configuration is parsed here only and handed down as
// plain values.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"
)

// version is stamped by the Makefile (-ldflags "-X main.version=…").
var version = "dev"

const usage = `hookstream — event-sourced webhook delivery engine

Usage:
  hookstream serve [flags]      run the API and the delivery workers
  hookstream migrate            apply pending database migrations
  hookstream keys create --name NAME [--org ID --env ID] [--test] [--json]
                                create an API key (printed once)
  hookstream keys list [--org ID] [--env ID] [--json] | keys revoke ID
                                list or revoke API keys (revocation is immediate)
  hookstream orgs create --name NAME | envs create --org ID --name NAME | envs list --org ID
                                organizations and their environments
  hookstream sessions create [--org ID --env ID] [--ttl 168h]
                                a browser session: prints its better-auth.session_token cookie
  hookstream login-link [--env ID] [--ttl 15m] [--url URL]
                                a one-time link that logs a browser into the dashboard
  hookstream secrets gen-key|status|rotate-key
                                encryption keys for stored secrets (see "hookstream secrets -h")
  hookstream devdb start        start the project-local PostgreSQL and print its DATABASE_URL
  hookstream devdb stop         stop the project-local PostgreSQL
  hookstream devdb exec [--durable] -- CMD
                                run CMD against a throwaway PostgreSQL (DATABASE_URL set), then remove it
  hookstream projections status [--json]
                                every consumer group's checkpoint, lag and last error
  hookstream projections rebuild NAME|--all [--json]
                                rebuild a read model from the events while the engine runs
                                (delivery_attempts, events, scheduler, replays)
  hookstream audit attempt|delivery|event ID [--as-of TIME] [--json]
                                the causal history of an attempt, delivery or event
  hookstream events tail [--type T] [--stream ID] [-n N] [--follow] [--json]
  hookstream events stream ID [--json]
  hookstream events export --from TIME --to TIME [--type T] [--out FILE]
                                read the event log (export writes NDJSON)
  hookstream replay --destination ID --from TIME --to TIME [--source ID] [--rate-limit N]
                    [--max-events N] [--wait] [--json]
  hookstream replay status|cancel ID [--wait] [--json]
                                re-deliver a time range of events (run by "serve")
  hookstream send-test --destination ID [--payload JSON] [--no-wait] [--json]
                                send a sample webhook to a destination and print its attempt
  hookstream retention status|run|set [--env ID --days N] [--json]
                                payload retention: what is kept, a pass now, an environment's setting
  hookstream version [--json]   print the version

Without DATABASE_URL the commands use the project-local cluster under
.data/postgres of the current directory (started when needed); only serve,
migrate and devdb start create it, so an operator command run from elsewhere fails
instead of answering from a new, empty database.
Run "hookstream COMMAND -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	log := newLogger(stderr)
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stdout, log)
	case "migrate":
		err = cmdMigrate(ctx, args[1:], stdout, log)
	case "keys":
		err = cmdKeys(ctx, args[1:], stdout, log)
	case "projections":
		err = cmdProjections(ctx, args[1:], stdout, stderr, log)
	case "audit":
		err = cmdAudit(ctx, args[1:], stdout, log)
	case "events":
		err = cmdEvents(ctx, args[1:], stdout, log)
	case "replay":
		err = cmdReplay(ctx, args[1:], stdout, stderr, log)
	case "send-test":
		err = cmdSendTest(ctx, args[1:], stdout, log)
	case "login-link":
		err = cmdLoginLink(ctx, args[1:], stdout, log)
	case "retention":
		err = cmdRetention(ctx, args[1:], stdout, log)
	case "orgs", "envs", "sessions":
		err = cmdTenancy(ctx, args[0], args[1:], stdout, log)
	case "secrets":
		err = cmdSecrets(ctx, args[1:], stdout, stderr, log)
	case "devdb":
		err = cmdDevDB(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-v":
		if len(args) > 1 && args[1] == "--json" {
			err = json.NewEncoder(stdout).Encode(map[string]string{"version": version})
		} else {
			fmt.Fprintln(stdout, "hookstream", version)
		}
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "hookstream: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		var help helpRequest
		if errors.As(err, &help) {
			fmt.Fprint(stdout, "Usage:\n  "+strings.TrimRight(help.usage, "\n")+"\n")
			return 0
		}
		var ec exitCode
		if errors.As(err, &ec) {
			return int(ec)
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(stderr, "hookstream:", ue.Error())
			return 2
		}
		fmt.Fprintln(stderr, "hookstream:", err)
		return 1
	}
	return 0
}

// exitCode ends the process with a code and no message (the child said it).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// newLogger logs JSON, or text when stderr is a terminal.
func newLogger(w io.Writer) *slog.Logger {
	// HOOKSTREAM_LOG_LEVEL: debug, info (the default), warn or error. At
	// warn the per-request lines (info) are left out.
	level := slog.LevelInfo
	switch strings.ToLower(os.Getenv("HOOKSTREAM_LOG_LEVEL")) {
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
