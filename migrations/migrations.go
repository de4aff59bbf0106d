// Package migrations holds the numbered SQL files of the schema, embedded in
// the binary, and the runner that applies them.
//
// Each file NNNN_name.sql is applied once, in order, in its own transaction,
// while the runner holds a session advisory lock, so concurrent starters
// serialise. An applied file whose checksum changed is refused: migrations
// are append-only history.
package migrations

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql
var files embed.FS

// advisoryLockKey serialises migration runs across processes.
const advisoryLockKey = 7_262_031_001

// ErrEdited is returned when a migration that was already applied has changed.
var ErrEdited = errors.New("an applied migration was edited")

// Migration is one embedded SQL file.
type Migration struct {
	Version  int
	Name     string
	SQL      string
	Checksum string
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	seen := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %q: name must be NNNN_description.sql", name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %q and %q share version %d", prev, name, v)
		}
		seen[v] = name
		body, err := fs.ReadFile(files, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", name, err)
		}
		sum := sha256.Sum256(body)
		out = append(out, Migration{Version: v, Name: name, SQL: string(body), Checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Fingerprint identifies the full set of embedded migrations; test templates
// are keyed by it so a new migration yields a new template database.
func Fingerprint() (string, error) {
	all, err := All()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, m := range all {
		h.Write([]byte(m.Name + m.Checksum))
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// Apply applies every pending migration and returns the names it applied.
// It returns ErrEdited (wrapped) when an applied migration changed.
func Apply(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	// Try the lock rather than wait inside a statement: a migrator waiting in
	// pg_advisory_lock is a running transaction, which CREATE INDEX
	// CONCURRENTLY in the holder's session would wait for (a deadlock).
	for {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", int64(advisoryLockKey)).Scan(&got); err != nil {
			return nil, fmt.Errorf("take migration lock: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("take migration lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(advisoryLockKey)) //nolint:errcheck // the session ends the lock anyway

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	applied := map[int]string{}
	rows, err := conn.Query(ctx, "SELECT version, checksum FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			return nil, fmt.Errorf("scan schema_migrations: %w", err)
		}
		applied[v] = sum
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	var done []string
	for _, m := range all {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum {
				return done, fmt.Errorf("%w: %s (checksum %s in the database, %s in the binary)", ErrEdited, m.Name, sum[:12], m.Checksum[:12])
			}
			continue
		}
		var err error
		if strings.Contains(m.SQL, noTransaction) {
			err = applyOutsideTransaction(ctx, conn.Conn(), m)
		} else {
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '15s'"); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, m.SQL); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", m.Version, m.Name, m.Checksum)
				return err
			})
		}
		if err != nil {
			return done, fmt.Errorf("apply migration %s: %w", m.Name, err)
		}
		done = append(done, m.Name)
	}
	return done, nil
}

// noTransaction marks a migration whose statements must run outside a
// transaction, one by one (CREATE INDEX CONCURRENTLY, so that appends go on
// while an index on a large table builds). Each statement must be safe to
// run again: a migration cut short is applied again from its start.
const noTransaction = "-- hookstream:no-transaction"

// applyOutsideTransaction runs a noTransaction migration statement by
// statement (split at semicolons that end a line), then records it.
func applyOutsideTransaction(ctx context.Context, conn *pgx.Conn, m Migration) error {
	for _, stmt := range strings.Split(m.SQL, ";\n") {
		if strings.TrimSpace(stripComments(stmt)) == "" {
			continue
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	_, err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", m.Version, m.Name, m.Checksum)
	return err
}

// stripComments drops -- comment lines.
func stripComments(sql string) string {
	var b strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// Pending returns the embedded migrations the database has not applied, and
// the names of applied ones whose file changed since (both empty when current).
func Pending(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (pending, edited []string, err error) {
	all, err := All()
	if err != nil {
		return nil, nil, err
	}
	rows, err := db.Query(ctx, "SELECT version, checksum FROM schema_migrations")
	if err != nil {
		return nil, nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	applied, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var v int
		var sum string
		err := r.Scan(&v, &sum)
		return [2]string{fmt.Sprint(v), sum}, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	sums := map[string]string{}
	for _, a := range applied {
		sums[a[0]] = a[1]
	}
	for _, m := range all {
		sum, ok := sums[fmt.Sprint(m.Version)]
		switch {
		case !ok:
			pending = append(pending, m.Name)
		case sum != m.Checksum:
			edited = append(edited, m.Name)
		}
	}
	return pending, edited, nil
}
