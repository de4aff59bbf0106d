package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/hookstream/hookstream/handlers/tenancy"
)

const loginLinkUsage = `hookstream login-link [--org ID] [--env ID] [--ttl 15m] [--url URL] [--json]
                                a one-time link that logs a browser into the dashboard

Examples:
  hookstream login-link
  hookstream login-link --env 0190… --ttl 5m --url https://hooks.example.com
  hookstream login-link --json | jq -r .url`

// cmdLoginLink prints a one-time dashboard login link: the browser that
// opens it first gets a session of the environment (the link then stops
// working), until the link's --ttl has passed.
func cmdLoginLink(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("login-link", flag.ContinueOnError)
	org := fs.String("org", "", "organization id (default: the first)")
	env := fs.String("env", "", "environment id (default: the organization's first)")
	ttl := fs.Duration("ttl", tenancy.DefaultLoginLinkTTL, "how long the link can be used")
	base := fs.String("url", envOr("HOOKSTREAM_PUBLIC_URL", "http://"+envOr("HOOKSTREAM_ADDR", "127.0.0.1:8080")), "the dashboard's address (HOOKSTREAM_PUBLIC_URL)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseFlags(fs, args, loginLinkUsage)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"login-link: unexpected arguments", loginLinkUsage}
	}
	if *ttl <= 0 || *ttl > 24*time.Hour {
		return usageError{"login-link: --ttl must be between 1s and 24h", loginLinkUsage}
	}
	u, err := url.Parse(*base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageError{fmt.Sprintf("login-link: --url %q is not an http(s) address", *base), loginLinkUsage}
	}
	db, err := openMigrated(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()
	acc := tenancy.NewAccounts(db.Pool, nil)
	o, e, err := resolveEnv(ctx, db, acc, *org, *env)
	if err != nil {
		return err
	}
	l, err := acc.CreateLoginLink(ctx, o, e, "cli", *ttl, time.Now())
	if err != nil {
		return err
	}
	// The token travels in the fragment: browsers never send it to a server
	// or in a Referer; the page posts it to /v1/auth/login.
	link := strings.TrimRight(u.String(), "/") + "/#/login?link=" + url.QueryEscape(l.Token)
	if *asJSON {
		return printJSON(stdout, map[string]any{"login_link": l, "url": link})
	}
	_, err = fmt.Fprintf(stdout, "%s\n(one use, until %s, environment %s)\n", link, l.ExpiresAt, e)
	return err
}
