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
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/internal/pgcluster"
	"github.com/hookstream/hookstream/migrations"
)

const localDataDir = ".data/postgres"

// database is an open pool and, when hookstream started the local cluster
// for this process, the function that stops it.
type database struct {
	Pool  *pgxpool.Pool
	URL   string
	Local bool
	close func()
}

func (d *database) Close() { d.close() }

// openDatabase connects to DATABASE_URL, or starts (or reuses) the local
// cluster under .data/postgres and creates its "hookstream" database.
func openDatabase(ctx context.Context, log *slog.Logger, maxConns int32) (*database, error) {
	return openDatabaseIn(ctx, log, maxConns, false)
}

// openDatabaseIn is openDatabase; create allows making the project-local
// cluster when none exists (serve only: an operator command run from
// another directory must not answer from a new, empty database).
func openDatabaseIn(ctx context.Context, log *slog.Logger, maxConns int32, create bool) (*database, error) {
	url := os.Getenv("DATABASE_URL")
	stopCluster := func() {}
	local := false
	if url == "" {
		c, started, err := startLocalCluster(ctx, create)
		if err != nil {
			return nil, err
		}
		if started {
			log.Info("started local PostgreSQL", "data_dir", c.Dir, "port", c.Port)
			stopCluster = func() {
				sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := c.Stop(sctx, false); err != nil {
					log.Error("stop local PostgreSQL", "err", err)
				} else {
					log.Info("stopped local PostgreSQL")
				}
			}
		}
		if err := ensureDatabase(ctx, c.URL("postgres"), "hookstream"); err != nil {
			stopCluster()
			return nil, err
		}
		url = c.URL("hookstream")
		local = true
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		stopCluster()
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
		// serve's pool keeps the connections warmPool readied.
		cfg.MinConns = min(maxConns/3, warmConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = pool.Ping(pctx)
		cancel()
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		stopCluster()
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	// Say which database the command acts on (never the password).
	where := "DATABASE_URL"
	if local {
		where = "the project-local cluster under " + localDataDir
	}
	log.Info("database", "name", cfg.ConnConfig.Database, "host", cfg.ConnConfig.Host, "port", cfg.ConnConfig.Port,
		"user", cfg.ConnConfig.User, "from", where)
	return &database{Pool: pool, URL: url, Local: local, close: func() { pool.Close(); stopCluster() }}, nil
}

// startLocalCluster opens .data/postgres and starts it unless it already runs;
// started says whether this call started it.
func startLocalCluster(ctx context.Context, create bool) (*pgcluster.Cluster, bool, error) {
	dir, err := filepath.Abs(localDataDir)
	if err != nil {
		return nil, false, err
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); !create && err != nil {
		return nil, false, fmt.Errorf("no local database under %s and DATABASE_URL is not set: run this from the directory "+
			"where `make run` created .data/, or set DATABASE_URL", dir)
	}
	c, err := pgcluster.Open(ctx, pgcluster.Params{Dir: dir})
	if err != nil {
		return nil, false, err
	}
	if _, ok := c.Running(ctx); ok {
		// Already running: Start only adopts it (and upgrades its auth).
		return c, false, c.Start(ctx)
	}
	if err := c.Start(ctx); err != nil {
		return nil, false, err
	}
	return c, true, nil
}

func ensureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to local PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return fmt.Errorf("create database %s: %w", name, err)
		}
	}
	return nil
}

const migrateUsage = `hookstream migrate [--json]

Applies the pending migrations (DATABASE_URL, else the project-local cluster
under .data/, created when missing). serve applies them too on start.

Examples:
  hookstream migrate
  DATABASE_URL=postgres://… hookstream migrate --json`

func cmdMigrate(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, `print {"applied": [names]}`)
	pos, err := parseFlags(fs, args, migrateUsage)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Sprintf("migrate: unexpected argument %q", pos[0]), migrateUsage}
	}
	db, err := openDatabaseIn(ctx, log, 2, true) // provisioning: may create the local cluster
	if err != nil {
		return err
	}
	defer db.Close()
	applied, err := migrations.Apply(ctx, db.Pool)
	if *asJSON {
		if jerr := json.NewEncoder(stdout).Encode(map[string]any{"applied": append([]string{}, applied...)}); jerr != nil && err == nil {
			err = jerr
		}
		return err
	}
	for _, name := range applied {
		fmt.Fprintln(stdout, "applied", name)
	}
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(stdout, "database is up to date")
	}
	return nil
}

func cmdDevDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("devdb: want start, stop or exec -- CMD")
	}
	switch args[0] {
	case "start":
		c, _, err := startLocalCluster(ctx, true)
		if err != nil {
			return err
		}
		if err := ensureDatabase(ctx, c.URL("postgres"), "hookstream"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "DATABASE_URL=%s\n", c.URL("hookstream"))
		return nil
	case "stop":
		dir, _ := filepath.Abs(localDataDir)
		if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
			return nil
		}
		c, err := pgcluster.Open(ctx, pgcluster.Params{Dir: dir})
		if err != nil {
			return err
		}
		return c.Stop(ctx, false)
	case "exec":
		rest := args[1:]
		durable := false
		if len(rest) > 0 && rest[0] == "--durable" {
			durable, rest = true, rest[1:]
		}
		if len(rest) > 0 && rest[0] == "--" {
			rest = rest[1:]
		}
		if len(rest) == 0 {
			return errors.New("devdb exec: want a command after --")
		}
		return devDBExec(ctx, rest, durable, stdout, stderr)
	}
	return fmt.Errorf("devdb: unknown subcommand %q", args[0])
}

// devDBExec runs a command against a throwaway cluster in a temporary
// directory, and removes the cluster afterwards whatever the command did,
// also on Ctrl-C or SIGTERM (the signal is passed on to the command first).
// With durable, the cluster keeps PostgreSQL's default fsync settings (for
// benchmarks); otherwise it trades durability for test speed.
func devDBExec(ctx context.Context, argv []string, durable bool, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "hookstream-pg-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// The temp dir must be traversable by the server's (unprivileged) user.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	// The cluster must not die with ctx: it is stopped explicitly below.
	bg := context.WithoutCancel(ctx)
	c, err := pgcluster.Open(bg, pgcluster.Params{Dir: filepath.Join(dir, "data"), Throwaway: !durable})
	if err != nil {
		return err
	}
	if err := c.Start(bg); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(bg, time.Minute)
		defer cancel()
		if err := c.Stop(sctx, true); err != nil {
			fmt.Fprintln(stderr, "hookstream devdb:", err)
		}
	}()
	fmt.Fprintf(stderr, "hookstream devdb: throwaway PostgreSQL on 127.0.0.1:%d\n", c.Port)

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+c.URL("postgres"))
	if err := cmd.Start(); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return exitCode(max(ee.ExitCode(), 1))
			}
			return err
		}
	}
}

// warmConns is how many connections serve readies before traffic.
const warmConns = 16

// warmPool opens n connections and prepares stmts on each, so the first
// webhooks find connections open and their statements parsed: without it a
// burst right after start pays connection setup and preparation (20-50 ms a
// statement on a busy machine) on its requests. A statement that fails to
// prepare is left to be prepared on first use.
//
// It also builds each statement's generic plan (buildGenericPlans), which
// the hot writers run on (kit.SendTx): otherwise every pooled connection
// plans each hot statement on its first use, 1-3 ms apiece for the claim
// and the hand-off insert, paid by the first webhooks after a start.
// (Running the statements to settle their plans was tried: empty arguments
// made PostgreSQL keep custom plans for good, 60% more PostgreSQL CPU.)
func warmPool(ctx context.Context, pool *pgxpool.Pool, stmts []string, n int, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conns := make([]*pgxpool.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range n {
		c, err := pool.Acquire(ctx)
		if err != nil {
			log.Warn("warm connections", "err", err)
			break
		}
		conns = append(conns, c)
	}
	// Four connections at a time: planning is PostgreSQL CPU, and a machine
	// with few cores gains nothing from more.
	failed := make([]int, len(conns))
	errs := make([]error, len(conns))
	slots := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			failed[i], errs[i] = warmConn(ctx, c.Conn(), stmts)
		})
	}
	wg.Wait()
	total := 0
	for i := range conns {
		total += failed[i]
	}
	if total > 0 {
		log.Warn("warm connections: some statements did not prepare", "failures", total)
	}
	for _, err := range errs {
		if err != nil {
			log.Warn("warm connections: generic plans not built", "err", err)
			break
		}
	}
}

// warmConn prepares stmts on conn and builds their generic plans; it
// returns how many did not prepare.
func warmConn(ctx context.Context, conn *pgx.Conn, stmts []string) (int, error) {
	var prepared []*pgconn.StatementDescription
	failed := 0
	for _, q := range stmts {
		sd, err := conn.Prepare(ctx, q, q)
		if err != nil {
			failed++
			continue
		}
		prepared = append(prepared, sd)
	}
	return failed, buildGenericPlans(ctx, conn, prepared)
}

// buildGenericPlans has PostgreSQL build and keep the generic plan of each
// prepared statement on conn, without running it: EXPLAIN EXECUTE under
// force_generic_plan plans through the statement's plan cache, and EXPLAIN
// without ANALYZE executes nothing. The parameters are NULL (a generic plan
// does not look at them). The statements run in one implicit transaction:
// the setting ends with it, also when one fails.
func buildGenericPlans(ctx context.Context, conn *pgx.Conn, sds []*pgconn.StatementDescription) error {
	if len(sds) == 0 {
		return nil
	}
	var q strings.Builder
	q.WriteString("SELECT set_config('plan_cache_mode', 'force_generic_plan', true);")
	for _, sd := range sds {
		q.WriteString("EXPLAIN EXECUTE ")
		q.WriteString(pgx.Identifier{sd.Name}.Sanitize())
		if len(sd.ParamOIDs) > 0 {
			q.WriteString("(NULL" + strings.Repeat(", NULL", len(sd.ParamOIDs)-1) + ")")
		}
		q.WriteString(";")
	}
	_, err := conn.PgConn().Exec(ctx, q.String()).ReadAll()
	return err
}
