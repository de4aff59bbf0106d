// Package upkeep keeps the engine's hot tables vacuumed and their planner
// statistics current, sooner than autovacuum does.
//
// Autovacuum visits a database at most once per autovacuum_naptime (a
// minute by default) and waits for a share of a table to change. The
// engine's tables change much faster than that, and from empty on a new
// installation:
//
//   - Every delivery job row is rewritten several times (claimed,
//     recorded, retried, finished), and each finished job leaves a dead
//     entry in the claim index until the table is vacuumed: under load the
//     claims walked ever more dead entries (the tuples a claim scanned rose
//     from ~40 to ~100 over a 100,000-webhook run, with the rate falling by
//     a third).
//   - A statement's cached plan follows the table statistics of when it
//     was made. Tables that grew from empty since their last analyze kept
//     the claim, the job update and the projector's updates on plans made
//     for near-empty tables: sequential scans of every row to touch one
//     (0.36 of a 0.48 ms claim at 150 webhooks/s on a table of 528 rows,
//     and growing with the table). An analyze gives the planner the rows
//     there are, and replaces the cached plans.
//
// Upkeep counts each table's dead and changed rows every Every, vacuums
// a table past its dead-row threshold and analyzes one whose changes since
// its last analyze reach both MinChanged and its live rows (a table is
// analyzed each time it about doubles: a handful of times as it grows, as
// a plan's choice needs the size right within a factor, not exactly),
// without waiting for a lock another process holds (SKIP_LOCKED).
package upkeep

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Upkeep vacuums and analyzes a set of tables.
type Upkeep struct {
	Pool *pgxpool.Pool
	Log  *slog.Logger
	// Vacuum holds the tables to vacuum, each with the count of dead rows
	// that triggers it.
	Vacuum map[string]int64
	// Analyze holds the tables to analyze.
	Analyze []string
	// Every is how often the tables' row counts are read (default 1s).
	Every time.Duration
	// MinChanged is the least count of rows changed since a table's last
	// analyze that triggers another (default 200), once also as many as its
	// live rows.
	MinChanged int64
	// Prune are statements run first every PruneEvery rounds (default 10)
	// that delete rows no longer needed (finished jobs, expired replay
	// jobs); each should bound its own batch.
	Prune      []string
	PruneEvery int
}

// Did is what one round did.
type Did struct {
	Vacuumed, Analyzed []string
	Pruned             int64 // rows the Prune statements deleted
}

func (u *Upkeep) defaults() {
	if u.Every <= 0 {
		u.Every = time.Second
	}
	if u.MinChanged <= 0 {
		u.MinChanged = 200
	}
	if u.PruneEvery <= 0 {
		u.PruneEvery = 10
	}
	if u.Log == nil {
		u.Log = slog.Default()
	}
}

// Run keeps the tables until ctx ends. Tables the role does not own are
// left to autovacuum (logged once). A failed round (the database away) is
// logged once per streak of failures and tried again, backing off to once
// a minute; autovacuum covers meanwhile.
func (u Upkeep) Run(ctx context.Context) {
	u.defaults()
	var owned Upkeep
	for wait := u.Every; ; wait = min(2*wait, time.Minute) {
		var err error
		if owned, err = u.owned(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if wait == u.Every {
			u.Log.Warn("table upkeep waits for the database; autovacuum covers meanwhile", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	u.Vacuum, u.Analyze = owned.Vacuum, owned.Analyze
	t := time.NewTicker(u.Every)
	defer t.Stop()
	failing, skip, round := 0, 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if skip > 0 {
			skip--
			continue
		}
		round++
		_, err := u.once(ctx, round%u.PruneEvery == 1 || u.PruneEvery == 1)
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			failing = 0
		default:
			if failing == 0 {
				u.Log.Warn("table upkeep failed; trying again, autovacuum covers meanwhile", "err", err)
			}
			failing++
			skip = min(1<<min(failing, 6), int(time.Minute/u.Every)) // back off: 2, 4, … rounds, at most a minute
		}
	}
}

// tables are every table u vacuums or analyzes.
func (u Upkeep) tables() []string {
	names := append([]string(nil), u.Analyze...)
	for t := range u.Vacuum {
		names = append(names, t)
	}
	return names
}

// owned is u restricted to the tables the role may vacuum and analyze (it
// owns them, or is a superuser): PostgreSQL only warns and skips the others.
func (u Upkeep) owned(ctx context.Context) (Upkeep, error) {
	names := u.tables()
	rows, err := u.Pool.Query(ctx, `SELECT c.relname FROM pg_class c
		WHERE c.oid = ANY(SELECT to_regclass(n)::oid FROM unnest($1::text[]) AS n)
		  AND (pg_has_role(c.relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))`, names)
	if err != nil {
		return u, err
	}
	ok := map[string]bool{}
	var name string
	if _, err := pgx.ForEachRow(rows, []any{&name}, func() error { ok[name] = true; return nil }); err != nil {
		return u, err
	}
	out := u
	out.Vacuum, out.Analyze = map[string]int64{}, nil
	var skipped []string
	for t, n := range u.Vacuum {
		if ok[t] {
			out.Vacuum[t] = n
		} else {
			skipped = append(skipped, t)
		}
	}
	for _, t := range u.Analyze {
		if ok[t] {
			out.Analyze = append(out.Analyze, t)
		} else {
			skipped = append(skipped, t)
		}
	}
	if len(skipped) > 0 {
		u.Log.Info("tables not owned by this role are left to autovacuum", "tables", strings.Join(skipped, ","))
	}
	return out, nil
}

// Once runs the Prune statements, reads the tables' counts and vacuums and
// analyzes those past their thresholds; it reports what it did. (Run prunes
// every PruneEvery rounds.)
func (u Upkeep) Once(ctx context.Context) (Did, error) {
	u.defaults()
	return u.once(ctx, true)
}

func (u Upkeep) once(ctx context.Context, prune bool) (Did, error) {
	var did Did
	for _, q := range u.Prune {
		if !prune {
			break
		}
		tag, err := u.Pool.Exec(ctx, q)
		if err != nil {
			return did, fmt.Errorf("prune: %w", err)
		}
		did.Pruned += tag.RowsAffected()
	}
	names := u.tables()
	rows, err := u.Pool.Query(ctx, `SELECT relname::text, n_dead_tup, n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables
		WHERE relid = ANY(SELECT to_regclass(n)::oid FROM unnest($1::text[]) AS n)`, names)
	if err != nil {
		return Did{}, err
	}
	type counts struct{ dead, changed, live int64 }
	seen := map[string]counts{}
	var name string
	var c counts
	if _, err := pgx.ForEachRow(rows, []any{&name, &c.dead, &c.changed, &c.live}, func() error { seen[name] = c; return nil }); err != nil {
		return Did{}, err
	}
	analyze := map[string]bool{}
	for _, t := range u.Analyze {
		if c := seen[t]; c.changed >= u.MinChanged && c.changed >= c.live {
			analyze[t] = true
		}
	}
	// VACUUM and ANALYZE run outside a transaction block: Exec with no
	// arguments sends them as a simple query.
	for t, min := range u.Vacuum {
		if seen[t].dead < min {
			continue
		}
		opts := "SKIP_LOCKED"
		if analyze[t] {
			opts += ", ANALYZE"
			delete(analyze, t)
			did.Analyzed = append(did.Analyzed, t)
		}
		if _, err := u.Pool.Exec(ctx, fmt.Sprintf("VACUUM (%s) %s", opts, pgx.Identifier{t}.Sanitize())); err != nil {
			return did, err
		}
		did.Vacuumed = append(did.Vacuumed, t)
	}
	var list []string
	for _, t := range u.Analyze {
		if analyze[t] {
			list = append(list, pgx.Identifier{t}.Sanitize())
			did.Analyzed = append(did.Analyzed, t)
		}
	}
	if len(list) > 0 {
		if _, err := u.Pool.Exec(ctx, "ANALYZE (SKIP_LOCKED) "+strings.Join(list, ", ")); err != nil {
			return did, err
		}
	}
	return did, nil
}
