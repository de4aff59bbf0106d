package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/retention"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/secretbox"
	"github.com/hookstream/hookstream/migrations"
)

// serveConfig is everything serve reads from flags and the environment.
type serveConfig struct {
	Addr          string
	Migrate       bool
	ShutdownGrace time.Duration
	ReadyMaxLag   time.Duration
	// Dev is `make run`'s local mode: destinations on loopback are allowed.
	Dev            bool
	AllowCIDRs     string
	PublicURL      string
	MaxIngestBody  int64
	Lanes          int
	PerDestination int
	PerTenantLanes int
	LeaseTTL       time.Duration
	API, Workers   bool
	// MetricsAddr serves /metrics on its own listener; MetricsToken requires
	// "Authorization: Bearer <token>" wherever it is served.
	MetricsAddr, MetricsToken string
	// PprofAddr serves net/http/pprof on its own listener (profiling).
	PprofAddr string
	// ArchiveDir receives the payload archives of environments that keep
	// one; RetentionInterval is how often payload expiry runs.
	ArchiveDir        string
	RetentionInterval time.Duration
}

func parseServe(args []string) (serveConfig, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c := serveConfig{}
	fs.StringVar(&c.Addr, "addr", envOr("HOOKSTREAM_ADDR", "127.0.0.1:8080"), "listen address (HOOKSTREAM_ADDR)")
	fs.BoolVar(&c.Migrate, "migrate", envBool("HOOKSTREAM_MIGRATE", true), "apply pending migrations at start (HOOKSTREAM_MIGRATE)")
	fs.BoolVar(&c.Dev, "dev", false, "local development mode: allow loopback destinations")
	fs.StringVar(&c.AllowCIDRs, "allow-cidrs", envOr("HOOKSTREAM_ALLOW_CIDRS", ""), "comma-separated CIDRs destinations may resolve to despite the private-address guard (HOOKSTREAM_ALLOW_CIDRS)")
	fs.StringVar(&c.PublicURL, "public-url", envOr("HOOKSTREAM_PUBLIC_URL", ""), "base URL shown in ingest URLs (HOOKSTREAM_PUBLIC_URL; default http://ADDR)")
	fs.Int64Var(&c.MaxIngestBody, "max-ingest-body", 1<<20, "largest ingested body in bytes (413 above)")
	fs.IntVar(&c.Lanes, "lanes", 64, "delivery batches in flight at once")
	fs.IntVar(&c.PerDestination, "per-destination", 32, "in-flight requests per destination")
	fs.IntVar(&c.PerTenantLanes, "per-tenant-lanes", 0, "delivery lanes one tenant (organization and environment) may hold; 0: three quarters of --lanes")
	fs.DurationVar(&c.LeaseTTL, "lease", 10*time.Second, "how long a claimed job's lease outlives its worker's last heartbeat (jobs of a crashed worker run again after it)")
	fs.DurationVar(&c.LeaseTTL, "lease-margin", 10*time.Second, "deprecated: the old name of --lease")
	fs.BoolVar(&c.API, "api", false, "run only the API (with --workers: both, the default)")
	fs.BoolVar(&c.Workers, "workers", false, "run only the delivery workers")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 15*time.Second, "how long in-flight work may finish on shutdown")
	fs.DurationVar(&c.ReadyMaxLag, "ready-max-lag", time.Minute, "consumer lag above which /v1/ready answers 503")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", envOr("HOOKSTREAM_METRICS_ADDR", ""), "serve /metrics on this address only, e.g. 127.0.0.1:9090 (HOOKSTREAM_METRICS_ADDR)")
	fs.StringVar(&c.PprofAddr, "pprof-addr", envOr("HOOKSTREAM_PPROF_ADDR", ""), "serve Go's pprof profiles on this address, e.g. 127.0.0.1:6060 (HOOKSTREAM_PPROF_ADDR; never a public one)")
	fs.StringVar(&c.ArchiveDir, "archive-dir", envOr("HOOKSTREAM_ARCHIVE_DIR", ""), "directory for the NDJSON archives of environments that archive payloads before they expire (HOOKSTREAM_ARCHIVE_DIR; default .data/archive with --dev)")
	fs.DurationVar(&c.RetentionInterval, "retention-interval", time.Minute, "how often expired webhook payloads are removed (one process at a time)")
	fs.StringVar(&c.MetricsToken, "metrics-token", envOr("HOOKSTREAM_METRICS_TOKEN", ""), "require Authorization: Bearer TOKEN on /metrics (HOOKSTREAM_METRICS_TOKEN)")
	var defaults strings.Builder
	fs.SetOutput(&defaults)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.PrintDefaults()
			return c, helpRequest{"hookstream serve [flags]\n\nRuns the API and the delivery workers (DATABASE_URL, else a local PostgreSQL under .data/ with --dev).\n\n" +
				"Examples:\n  hookstream serve --dev\n  DATABASE_URL=postgres://… hookstream serve --addr :8080\n  hookstream serve --api-only    # and on other hosts: hookstream serve --workers\n\nFlags:\n" + defaults.String()}
		}
		return c, usageError{"serve: " + err.Error(), "hookstream serve [flags] (hookstream serve -h lists them)"}
	}
	if fs.NArg() > 0 {
		return c, usageError{fmt.Sprintf("serve: unexpected argument %q", fs.Arg(0)), "hookstream serve [flags] (hookstream serve -h lists them)"}
	}
	if !c.API && !c.Workers {
		c.API, c.Workers = true, true
	}
	return c, nil
}

func cmdServe(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	cfg, err := parseServe(args)
	if err != nil {
		return err // a helpRequest or a usageError
	}
	if os.Getenv("GOGC") == "" {
		// The engine's heap is small and short-lived (batches, payloads;
		// 41% of the bytes it allocates saturated are pgx's parameter
		// buffers, which pgx shrinks after every large statement): a
		// collection every 400% of growth instead of 100% spends far less
		// CPU on marking for some tens of MB. Saturated at fail-first 1, 8
		// interleaved pairs of 8,000 against 200: engine CPU per delivery
		// 5.7% lower, peak RSS 62–85 MB against 96–122 MB. GOGC overrides
		// it (and GOMEMLIMIT bounds it).
		debug.SetGCPercent(400)
	}
	db, err := openDatabaseIn(ctx, log, 50, true)
	if err != nil {
		return err
	}
	defer db.Close()
	if os.Getenv("GOMAXPROCS") == "" {
		cores := runtime.GOMAXPROCS(0)
		if n := engineProcs(cores, db.Local || localHost(db.Pool.Config().ConnConfig.Host)); n != cores {
			runtime.GOMAXPROCS(n)
			log.Info("Go runtime: the database address is on this machine, so the engine keeps half the cores for PostgreSQL "+
				"until it is busy enough to need them all; set GOMAXPROCS when it is a proxy (pgbouncer, a cloud SQL proxy) to a database elsewhere",
				"gomaxprocs", n, "cores", cores)
			govCtx, stopGov := context.WithCancel(ctx)
			defer stopGov()
			go newProcsGovernor(n, cores, log).run(govCtx)
		}
	}
	policy, keyring, err := prepareServe(ctx, cfg, db, stdout, log)
	if err != nil {
		return err
	}
	warmPool(ctx, db.Pool, handlers.HotStatements(), warmConns, log)
	store := eventstore.New(nil)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = "http://" + ln.Addr().String()
	}
	// One notifier for the API and the engine: ingest wakes this process's
	// dispatcher directly, and other processes by NOTIFY after its commit.
	notifier := handlers.NewWake(db.Pool)
	svc := handlers.NewService(handlers.ServiceParams{Pool: db.Pool, Store: store, Log: log, PublicURL: publicURL, MaxIngestBody: cfg.MaxIngestBody,
		Outbound: policy, Secrets: keyring, Wake: notifier})
	defer svc.Close()
	metrics := handlers.NewMetrics(db.Pool, log)
	cookieSecret, err := loadAuthSecret(db, log)
	if err != nil {
		return err
	}
	// /metrics names every tenant's destinations: on the API's address only
	// behind a token (or in dev mode); otherwise on --metrics-addr.
	metricsOnAPI := cfg.MetricsAddr == "" && (cfg.MetricsToken != "" || cfg.Dev)
	if cfg.MetricsAddr == "" && !metricsOnAPI {
		log.Warn("metrics are not served: set --metrics-addr (a private address) or --metrics-token")
	}
	api := handlers.NewAPI(handlers.APIParams{Service: svc, Pool: db.Pool, Store: store, Log: log, Version: version, Metrics: metrics, ReadyMaxLag: cfg.ReadyMaxLag,
		MetricsOnAPI: metricsOnAPI, MetricsToken: cfg.MetricsToken, CookieSecret: cookieSecret,
		SecureCookies: strings.HasPrefix(publicURL, "https://")})
	var handler http.Handler = api
	if !cfg.API {
		// A workers-only process still answers its orchestrator and scraper.
		handler = operatorOnly(api)
	}
	srv := newHTTPServer(handler)
	errc := make(chan error, 3)
	closeSide, err := serveSide(cfg, metrics, errc, log)
	defer closeSide()
	if err != nil {
		return err
	}
	go func() { errc <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "hookstream %s listening on %s\n", version, publicURL)
	if cfg.API {
		fmt.Fprintf(stdout, "dashboard: %s/  (%s)\n", strings.TrimRight(publicURL, "/"), dashboardLogin(cfg, db))
	}
	engineCtx, stopEngine := context.WithCancel(ctx)
	defer stopEngine()
	archiveDir := cfg.ArchiveDir
	if archiveDir == "" && cfg.Dev {
		archiveDir = filepath.Join(".data", "archive")
	}
	expiry := retention.New(retention.Params{Pool: db.Pool, Store: store, Log: log, Interval: cfg.RetentionInterval, ArchiveDir: archiveDir,
		OnBatch: metrics.RetentionBatch, OnHistory: metrics.RetentionHistory})
	engineDone := startEngine(engineCtx, cfg, handlers.EngineParams{Pool: db.Pool, Store: store, Log: log, Outbound: policy, Secrets: keyring,
		ConfigChanged: svc.ForgetRoutes, Lanes: cfg.Lanes, PerDestination: cfg.PerDestination, PerTenantLanes: cfg.PerTenantLanes, LeaseTTL: cfg.LeaseTTL,
		ShutdownGrace: cfg.ShutdownGrace, Metrics: metrics, Wake: notifier, Background: []func(context.Context){expiry.Loop}}, svc)
	log.Info("serving", "addr", ln.Addr().String(), "api", cfg.API, "workers", cfg.Workers)

	return awaitShutdown(ctx, cfg, srv, errc, engineDone, stopEngine, log)

}

// operatorOnly serves the health, readiness and metrics routes of h (a
// workers-only process) and answers 404 to the rest of the API.
func operatorOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/health", "/v1/ready", "/metrics":
			h.ServeHTTP(w, r)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintln(w, `{"error":"Not found: this process runs the delivery workers only (serve --workers)","status":404,"request_id":""}`)
		}
	})
}

// newHTTPServer bounds what a client can hold: header size and the time to
// send headers and body, to receive the answer, and to keep an idle
// connection. Routes that wait longer (retry with wait) extend their own
// write deadline.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 256 << 10}
}

func outboundPolicy(cfg serveConfig) (outbound.Policy, error) {
	var p outbound.Policy
	cidrs := cfg.AllowCIDRs
	if cfg.Dev {
		cidrs += ",127.0.0.0/8,::1/128"
	}
	for _, c := range strings.Split(cidrs, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(c)
		if err != nil {
			return p, fmt.Errorf("--allow-cidrs: %q is not a CIDR", c)
		}
		p.Allow = append(p.Allow, pfx)
	}
	return p, nil
}

// bootstrapKey creates a default organization, environment and API key on
// the first start against an empty database, and prints the key once.
func bootstrapKey(ctx context.Context, db *database, stdout io.Writer) error {
	has, err := tenancy.HasAPIKeys(ctx, db.Pool)
	if err != nil || has {
		return err
	}
	k, err := tenancy.CreateAPIKey(ctx, db.Pool, eventstore.New(nil), tenancy.KeyParams{Name: "default"}, time.Now())
	if err != nil {
		return err
	}
	if !db.Local {
		fmt.Fprintf(stdout, "\nCreated the first API key (shown once, keep it):\n\n  export HOOKSTREAM_API_KEY=%s\n\n", k.Key)
		return nil
	}
	// On the project-local development cluster the key is also kept beside
	// its data (0600), so another shell can pick it up.
	if err := os.WriteFile(localAPIKeyFile, []byte(k.Key+"\n"), 0o600); err != nil {
		return fmt.Errorf("keep the first API key in %s: %w", localAPIKeyFile, err)
	}
	fmt.Fprintf(stdout, "\nCreated the first API key (also in %s):\n\n  export HOOKSTREAM_API_KEY=%s\n\n", localAPIKeyFile, k.Key)
	return nil
}

// dashboardLogin says how to log in to the dashboard: on the project-local
// development cluster with the key kept in .data/api_key, else with any key
// or a one-time link.
func dashboardLogin(cfg serveConfig, db *database) string {
	if cfg.Dev && db.Local {
		if b, err := os.ReadFile(localAPIKeyFile); err == nil {
			return "log in with the API key " + strings.TrimSpace(string(b))
		}
	}
	return "log in with an API key, or open a link from: hookstream login-link"
}

// localAPIKeyFile keeps the first API key of the project-local cluster.
const localAPIKeyFile = ".data/api_key"

// prepareServe readies the database before serving: migrations (with
// --migrate), the outbound policy, the encryption keyring (sealing old
// plaintext secrets) and the first API key of an empty database.
func prepareServe(ctx context.Context, cfg serveConfig, db *database, stdout io.Writer, log *slog.Logger) (outbound.Policy, *secretbox.Keyring, error) {
	if cfg.Migrate {
		applied, err := migrations.Apply(ctx, db.Pool)
		if err != nil {
			return outbound.Policy{}, nil, err
		}
		for _, m := range applied {
			log.Info("applied migration", "name", m)
		}
	}
	policy, err := outboundPolicy(cfg)
	if err != nil {
		return policy, nil, err
	}
	if cfg.Dev {
		log.Warn("dev mode: deliveries to loopback addresses are allowed")
	}
	keyring, err := loadKeyring(db, log)
	if err != nil {
		return policy, nil, err
	}
	if err := prepareSecrets(ctx, db, keyring, log); err != nil {
		return policy, nil, err
	}
	return policy, keyring, bootstrapKey(ctx, db, stdout)
}

// serveSide starts the side listeners: pprof (--pprof-addr) and metrics
// (--metrics-addr, whose failure is reported on errc). The returned
// function closes them.
func serveSide(cfg serveConfig, metrics *metrics.Metrics, errc chan<- error, log *slog.Logger) (func(), error) {
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			_ = c()
		}
	}
	if cfg.PprofAddr != "" {
		pln, err := net.Listen("tcp", cfg.PprofAddr)
		if err != nil {
			return closeAll, fmt.Errorf("listen on %s (pprof): %w", cfg.PprofAddr, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		psrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = psrv.Serve(pln) }()
		closers = append(closers, psrv.Close)
		log.Info("serving pprof", "addr", pln.Addr().String())
	}
	if cfg.MetricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return closeAll, fmt.Errorf("listen on %s (metrics): %w", cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", handlers.MetricsHandler(metrics, cfg.MetricsToken))
		msrv := newHTTPServer(mux)
		go func() { errc <- msrv.Serve(mln) }()
		closers = append(closers, msrv.Close)
		log.Info("serving metrics", "addr", mln.Addr().String())
	}
	return closeAll, nil
}

// awaitShutdown serves until a signal, a listener's failure (errc) or the
// engine stopping on its own, then shuts the server down, stops the engine
// and waits for it to record what it sent.
func awaitShutdown(ctx context.Context, cfg serveConfig, srv *http.Server, errc <-chan error, engineDone <-chan error,
	stopEngine context.CancelFunc, log *slog.Logger) error {
	var engineErr error
	engineStopped := false
	var engineWatch <-chan error // nil (never ready) when this process runs no workers
	if cfg.Workers {
		engineWatch = engineDone
	}
	var serverErr error
	select {
	case err := <-errc:
		// A listener failed: stop like on a signal (the engine lets its
		// requests finish and records them), then report it.
		serverErr = fmt.Errorf("http server: %w", err)
		log.Error("http server stopped; shutting down", "err", err)
	case <-ctx.Done():
	case engineErr = <-engineWatch:
		// The workers stopped on their own: serve no more, so a supervisor restarts us.
		engineStopped = true
		if engineErr == nil {
			engineErr = errors.New("stopped unexpectedly")
		}
		log.Error("engine stopped; shutting down", "err", engineErr)
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	stopEngine()
	if !engineStopped {
		engineErr = <-engineDone
	}
	if engineErr != nil {
		return errors.Join(serverErr, fmt.Errorf("engine: %w", engineErr))
	}
	return serverErr
}

// startEngine runs the delivery engine until ctx ends when this process
// runs workers, and has ingest hand it the jobs it has room for; the
// channel gives Run's result (closed at once otherwise).
func startEngine(ctx context.Context, cfg serveConfig, p handlers.EngineParams, svc *handlers.Service) <-chan error {
	done := make(chan error, 1)
	if !cfg.Workers {
		close(done)
		return done
	}
	engine := handlers.NewEngine(p)
	svc.HandOff(engine) // ingest gives this engine the jobs it has room for
	go func() { done <- engine.Run(ctx) }()
	return done
}

// engineProcs returns how many Ps the Go runtime starts with of cores (Go's
// default: the machine's cores, or a container's CPU limit) when GOMAXPROCS
// is not set: half of them, at least one, when PostgreSQL runs on the same
// machine (a procsGovernor then gives the engine all of them while it is
// busy), else all of them. The engine's
// work per webhook is small and hops between goroutines (the request, the
// group commit, a lane, the recorded group); with a P per core, each hop
// woke another thread (futex: 6% of the engine's CPU at 150/s with 2 Ps,
// 2.6% with one) on a core PostgreSQL needed.
// Measured on 2 cores with the database local, 150 webhooks/s: engine CPU
// per delivery -17% (fail-first 0) and -11% (fail-first 1), latency
// unchanged. Saturated, though, one P left a core idle while PostgreSQL
// waited on a WAL flush, which is why procsGovernor hands the engine every
// core while it is busy (README, Performance).
func engineProcs(cores int, dbLocal bool) int {
	if !dbLocal {
		return cores
	}
	return max(1, cores/2)
}

// localHost reports whether a pgx host is this machine: a Unix socket
// directory, localhost or a loopback address. A local proxy to a database
// elsewhere (pgbouncer, a cloud SQL proxy, a tunnel) looks the same; the
// log line at start says what was decided, and GOMAXPROCS overrides it.
// Setting it also turns off the runtime's tracking of a container's CPU
// limit, which the remote case keeps.
func localHost(host string) bool {
	if host == "" || strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
