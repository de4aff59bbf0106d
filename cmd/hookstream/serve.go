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
	"time"

	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/migrations"
)

// serveConfig is everything serve reads from flags and the environment.
type serveConfig struct {
	Addr          string
	Migrate       bool
	ShutdownGrace time.Duration
	// Dev is `make run`'s local mode: destinations on loopback are allowed.
	Dev bool
}

func parseServe(args []string) (serveConfig, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c := serveConfig{}
	fs.StringVar(&c.Addr, "addr", envOr("HOOKSTREAM_ADDR", "127.0.0.1:8080"), "listen address (HOOKSTREAM_ADDR)")
	fs.BoolVar(&c.Migrate, "migrate", envBool("HOOKSTREAM_MIGRATE", true), "apply pending migrations at start (HOOKSTREAM_MIGRATE)")
	fs.BoolVar(&c.Dev, "dev", false, "local development mode: allow loopback destinations")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 15*time.Second, "how long in-flight work may finish on shutdown")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	return c, nil
}

func cmdServe(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	cfg, err := parseServe(args)
	if err != nil {
		return exitCode(2)
	}
	db, err := openDatabase(ctx, log, 50)
	if err != nil {
		return err
	}
	defer db.Close()
	if cfg.Migrate {
		applied, err := migrations.Apply(ctx, db.Pool)
		if err != nil {
			return err
		}
		for _, m := range applied {
			log.Info("applied migration", "name", m)
		}
	}
	api := handlers.NewAPI(handlers.APIParams{Pool: db.Pool, Log: log, Version: version})
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "hookstream %s listening on http://%s\n", version, ln.Addr())
	log.Info("serving", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
