package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers"
	"github.com/hookstream/hookstream/migrations"
)

func cmdKeys(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New("keys: want `keys create --name NAME [--org ID --env ID] [--test] [--json]`")
	}
	fs := flag.NewFlagSet("keys create", flag.ContinueOnError)
	name := fs.String("name", "", "key name (required)")
	org := fs.String("org", "", "organization id (default: the first, created when none)")
	env := fs.String("env", "", "environment id (default: the organization's first)")
	test := fs.Bool("test", false, "create an hs_test_ key")
	asJSON := fs.Bool("json", false, "print a JSON object instead of the bare key")
	if err := fs.Parse(args[1:]); err != nil {
		return exitCode(2)
	}
	if *name == "" {
		return errors.New("keys create: --name is required")
	}
	db, err := openDatabase(ctx, log, 2)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := migrations.Apply(ctx, db.Pool); err != nil {
		return err
	}
	k, err := handlers.CreateAPIKey(ctx, db.Pool, eventstore.New(nil), handlers.KeyParams{Name: *name, OrgID: *org, EnvID: *env, Test: *test}, time.Now())
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(k)
	}
	_, err = fmt.Fprintln(stdout, k.Key)
	return err
}
