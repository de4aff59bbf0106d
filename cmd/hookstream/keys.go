package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/tenancy"
)

const keysUsage = `hookstream keys create --name NAME [--org ID --env ID] [--test] [--json]
  hookstream keys list [--org ID] [--env ID] [--json]
  hookstream keys revoke ID [--org ID] [--json]

Examples:
  hookstream keys create --name ci --json | jq -r .api_key.key
  hookstream keys list
  hookstream keys revoke 0190…`

const tenancyUsage = `hookstream orgs create --name NAME [--json]
  hookstream envs create --org ID --name NAME [--slug SLUG] [--json]
  hookstream envs list --org ID [--json]
  hookstream sessions create [--org ID --env ID] [--ttl 168h] [--json]

Examples:
  hookstream orgs create --name Acme --json
  hookstream envs create --org 0190… --name Staging --slug staging
  hookstream sessions create --ttl 24h`

// firstOrg is the organization commands act on when --org is not given:
// the oldest, as on a single-tenant install.
func firstOrg(ctx context.Context, db *database) (string, error) {
	var org string
	err := db.Pool.QueryRow(ctx, `SELECT id FROM organizations ORDER BY created_at, id LIMIT 1`).Scan(&org)
	if err != nil {
		return "", errors.New("no organization yet: run `hookstream serve` once, or `hookstream orgs create --name NAME`")
	}
	return org, nil
}

func printJSON(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

func cmdKeys(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		return usageError{"keys: want create, list or revoke", keysUsage}
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	org := fs.String("org", "", "organization id (default: the first)")
	env := fs.String("env", "", "environment id")
	asJSON := fs.Bool("json", false, "print JSON")
	var name *string
	var test *bool
	switch sub {
	case "-h", "--help", "help":
		_, err := fmt.Fprintln(stdout, "Usage:\n  "+keysUsage)
		return err
	case "create":
		name = fs.String("name", "", "key name (required)")
		test = fs.Bool("test", false, "create an hs_test_ key (in the organization's test environment unless --env)")
	case "list", "revoke":
	default:
		if isHelp(sub) {
			return helpRequest{keysUsage}
		}
		return usageError{fmt.Sprintf("keys: unknown subcommand %q", sub), keysUsage}
	}
	pos, err := parseFlags(fs, args, keysUsage)
	if err != nil {
		return err
	}
	if sub == "create" && *name == "" {
		return usageError{"keys create: --name is required", keysUsage}
	}
	if (sub == "revoke") != (len(pos) == 1) {
		return usageError{"keys " + sub + ": unexpected arguments", keysUsage}
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	acc := tenancy.NewAccounts(db.Pool, nil)
	switch sub {
	case "create":
		k, err := tenancy.CreateAPIKey(ctx, db.Pool, eventstore.New(nil), tenancy.KeyParams{Name: *name, OrgID: *org, EnvID: *env, Test: *test}, time.Now())
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, k)
		}
		_, err = fmt.Fprintln(stdout, k.Key)
		return err
	}
	if *org == "" {
		if *org, err = firstOrg(ctx, db); err != nil {
			return err
		}
	}
	if sub == "revoke" {
		if err := acc.RevokeAPIKey(ctx, *org, pos[0], "cli", time.Now()); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "revoked %s\n", pos[0])
		return err
	}
	keys, err := acc.ListAPIKeys(ctx, *org, *env)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, keys)
	}
	tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tPREFIX\tENV\tCREATED\tLAST USED\tREVOKED")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.KeyPrefix, k.EnvID, k.CreatedAt, orDash(deref(k.LastUsedAt)), orDash(deref(k.RevokedAt)))
	}
	return tw.Flush()
}

// cmdTenancy runs `orgs`, `envs` and `sessions`.
func cmdTenancy(ctx context.Context, cmd string, args []string, stdout io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		return usageError{cmd + ": want a subcommand", tenancyUsage}
	}
	sub, args := args[0], args[1:]
	if sub == "-h" || sub == "--help" || sub == "help" {
		_, err := fmt.Fprintln(stdout, "Usage:\n  "+tenancyUsage)
		return err
	}
	fs := flag.NewFlagSet(cmd+" "+sub, flag.ContinueOnError)
	org := fs.String("org", "", "organization id")
	env := fs.String("env", "", "environment id")
	name := fs.String("name", "", "name")
	slug := fs.String("slug", "", "slug (default: from the name)")
	ttl := fs.Duration("ttl", tenancy.DefaultSessionTTL, "session lifetime")
	asJSON := fs.Bool("json", false, "print JSON")
	known := map[string]bool{"orgs create": true, "envs create": true, "envs list": true, "sessions create": true}
	if !known[cmd+" "+sub] {
		if isHelp(sub) {
			return helpRequest{tenancyUsage}
		}
		return usageError{fmt.Sprintf("%s: unknown subcommand %q", cmd, sub), tenancyUsage}
	}
	pos, err := parseFlags(fs, args, tenancyUsage)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{cmd + " " + sub + ": unexpected arguments", tenancyUsage}
	}
	if sub == "create" && cmd != "sessions" && *name == "" {
		return usageError{cmd + " create: --name is required", tenancyUsage}
	}
	if cmd == "envs" && *org == "" {
		return usageError{"envs " + sub + ": --org is required", tenancyUsage}
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	acc := tenancy.NewAccounts(db.Pool, nil)
	now := time.Now()
	var out any
	var line string
	switch cmd + " " + sub {
	case "orgs create":
		o, err := acc.CreateOrganization(ctx, *name, "cli", now)
		if err != nil {
			return err
		}
		out, line = o, fmt.Sprintf("organization %s, environment %s (%s)", o.ID, o.Environment.ID, o.Environment.Slug)
	case "envs create":
		in := tenancy.EnvironmentInput{Name: name}
		if *slug != "" {
			in.Slug = slug
		}
		e, err := acc.CreateEnvironment(ctx, domain.Tenant{OrgID: *org, Actor: "cli"}, in, now)
		if err != nil {
			return err
		}
		out, line = e, fmt.Sprintf("environment %s (%s)", e.ID, e.Slug)
	case "envs list":
		return listEnvironments(ctx, acc, *org, *asJSON, stdout)
	case "sessions create":
		return createSession(ctx, db, acc, *org, *env, *ttl, *asJSON, stdout, log)
	}
	if *asJSON {
		return printJSON(stdout, out)
	}
	_, err = fmt.Fprintln(stdout, line)
	return err
}

// listEnvironments prints an organization's environments.
func listEnvironments(ctx context.Context, acc *tenancy.Accounts, org string, asJSON bool, stdout io.Writer) error {
	envs, err := acc.ListEnvironments(ctx, domain.Tenant{OrgID: org})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, envs)
	}
	tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSLUG\tNAME\tCREATED")
	for _, e := range envs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.ID, e.Slug, e.Name, e.CreatedAt)
	}
	return tw.Flush()
}

// createSession makes a user session for an environment (the first
// organization's first environment by default) and prints its cookie.
// resolveEnv checks an organization and environment given by flags, and
// fills in the first organization and its first environment when not given.
func resolveEnv(ctx context.Context, db *database, acc *tenancy.Accounts, org, env string) (string, string, error) {
	var err error
	if org == "" {
		if org, err = firstOrg(ctx, db); err != nil {
			return "", "", err
		}
	}
	if env == "" {
		envs, err := acc.ListEnvironments(ctx, domain.Tenant{OrgID: org})
		if err != nil {
			return "", "", err
		}
		if len(envs) == 0 {
			return "", "", fmt.Errorf("organization %s has no environment", org)
		}
		env = envs[0].ID
	}
	if _, err := acc.GetEnvironment(ctx, domain.Tenant{OrgID: org}, env); err != nil {
		return "", "", err
	}
	return org, env, nil
}

func createSession(ctx context.Context, db *database, acc *tenancy.Accounts, org, env string, ttl time.Duration, asJSON bool,
	stdout io.Writer, log *slog.Logger) error {
	org, env, err := resolveEnv(ctx, db, acc, org, env)
	if err != nil {
		return err
	}
	cookieSecret, err := loadAuthSecret(db, log)
	if err != nil {
		return err
	}
	s, err := acc.CreateSession(ctx, org, env, "", "cli", ttl, time.Now())
	if err != nil {
		return err
	}
	cookie := tenancy.SessionCookie(cookieSecret, s.Token)
	if asJSON {
		return printJSON(stdout, map[string]any{"session": s, "cookie": cookie})
	}
	_, err = fmt.Fprintf(stdout, "session %s for environment %s, until %s\nX-CSRF-Token: %s   (every write with the cookie sends it)\n%s\n",
		s.ID, env, s.ExpiresAt, s.CSRFToken, cookie)
	return err
}
