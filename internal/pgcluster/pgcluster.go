// Package pgcluster provisions a project-local PostgreSQL cluster from the
// machine's PostgreSQL server binaries, for `make run`, `make db` and `make test`.
//
// initdb refuses to run as root, so when the process is root every server
// binary runs as an unprivileged user ("postgres", created when missing).
package pgcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// ErrNoBinaries is returned when no PostgreSQL server binaries can be found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: install them, e.g. `apt-get install postgresql-15`")

// Cluster is one PostgreSQL data directory and the server running on it.
// The server listens on 127.0.0.1 only, with password (SCRAM) auth: another
// local user cannot connect to it. The password sits beside the data
// directory (DIR.password, mode 0600).
type Cluster struct {
	Dir      string // data directory
	Port     int
	binDir   string
	cred     *syscall.Credential // nil when not root
	ownerID  [2]int
	password string
	// upgrade is set for a cluster made before password auth: Start sets a
	// password and switches its pg_hba.conf from trust to scram-sha-256.
	upgrade bool
}

// passwordFile is where a cluster's superuser password is kept.
func passwordFile(dir string) string { return filepath.Clean(dir) + ".password" }

// Params configure Open.
type Params struct {
	// Dir is the data directory; it is created (initdb) when it holds no cluster.
	Dir string
	// Throwaway tunes the cluster for tests: no fsync, no synchronous commit.
	Throwaway bool
}

// FindBinDir returns the directory holding initdb and pg_ctl: PATH first, then
// the newest /usr/lib/postgresql/*/bin. It returns ErrNoBinaries when none exists.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Open prepares a cluster in p.Dir (running initdb when the directory holds
// none) without starting it.
func Open(ctx context.Context, p Params) (*Cluster, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: p.Dir, binDir: bin, ownerID: [2]int{os.Getuid(), os.Getgid()}}
	if os.Geteuid() == 0 {
		uid, gid, err := unprivilegedUser()
		if err != nil {
			return nil, err
		}
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		c.ownerID = [2]int{uid, gid}
	}
	// Parents must be traversable by the server's user; the data dir is its own.
	if err := os.MkdirAll(filepath.Dir(p.Dir), 0o755); err != nil {
		return nil, fmt.Errorf("create data dir parent: %w", err)
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chown(p.Dir, c.ownerID[0], c.ownerID[1]); err != nil {
		return nil, fmt.Errorf("chown data dir: %w", err)
	}
	if raw, err := os.ReadFile(passwordFile(p.Dir)); err == nil {
		c.password = strings.TrimSpace(string(raw))
	} else if c.password, err = newPassword(passwordFile(p.Dir)); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(p.Dir, "PG_VERSION")); err == nil {
		hba, _ := os.ReadFile(filepath.Join(p.Dir, "pg_hba.conf"))
		c.upgrade = trustAuth(string(hba))
		return c, nil
	}
	pwfile, err := c.tempPasswordFile()
	if err != nil {
		return nil, err
	}
	defer os.Remove(pwfile)
	if out, err := c.run(ctx, "initdb", "-D", p.Dir, "-U", "postgres", "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
		"--pwfile="+pwfile, "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = ''",
		"max_connections = 300",
		"shared_buffers = 256MB",
		"max_wal_size = 2GB",
		"log_min_messages = warning",
	}
	if p.Throwaway {
		conf = append(conf, "fsync = off", "synchronous_commit = off", "full_page_writes = off")
	}
	f, err := os.OpenFile(filepath.Join(p.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n# hookstream\n" + strings.Join(conf, "\n") + "\n"); err != nil {
		return nil, fmt.Errorf("write postgresql.conf: %w", err)
	}
	return c, nil
}

// trustAuth reports whether a pg_hba.conf has a trust rule (comments, such
// as initdb's list of methods, do not count).
func trustAuth(hba string) bool {
	for _, line := range strings.Split(hba, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) >= 4 && fields[len(fields)-1] == "trust" {
			return true
		}
	}
	return false
}

// newPassword makes a random password and keeps it in path (0600).
func newPassword(path string) (string, error) {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	pw := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write cluster password: %w", err)
	}
	return pw, nil
}

// tempPasswordFile writes the password where initdb (running as the
// server's user) can read it; the caller removes it.
func (c *Cluster) tempPasswordFile() (string, error) {
	f, err := os.CreateTemp(filepath.Dir(c.Dir), ".pwfile-")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(c.password + "\n"); err != nil {
		return "", err
	}
	if err := os.Chown(f.Name(), c.ownerID[0], c.ownerID[1]); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// upgradeAuth gives a trust-auth cluster (made by an older hookstream) its
// password and switches it to scram-sha-256.
func (c *Cluster) upgradeAuth(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port))
	if err != nil {
		return fmt.Errorf("connect to set the cluster password: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET password_encryption = 'scram-sha-256'"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "ALTER USER postgres PASSWORD "+quoteLiteral(c.password)); err != nil {
		return fmt.Errorf("set the cluster password: %w", err)
	}
	hbaPath := filepath.Join(c.Dir, "pg_hba.conf")
	hba, err := os.ReadFile(hbaPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(hbaPath, []byte(strings.ReplaceAll(string(hba), "trust", "scram-sha-256")), 0o600); err != nil {
		return err
	}
	if err := os.Chown(hbaPath, c.ownerID[0], c.ownerID[1]); err != nil {
		return err
	}
	if out, err := c.run(ctx, "pg_ctl", "reload", "-D", c.Dir); err != nil {
		return fmt.Errorf("pg_ctl reload: %w: %s", err, out)
	}
	c.upgrade = false
	return nil
}

// quoteLiteral quotes a hex password as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// unprivilegedUser returns the uid and gid of "postgres", creating a system
// user of that name when it does not exist.
func unprivilegedUser() (int, int, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres").CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("create user postgres to run PostgreSQL as non-root: %w: %s", err, out)
		}
		if u, err = user.Lookup("postgres"); err != nil {
			return 0, 0, fmt.Errorf("look up user postgres: %w", err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid, nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	cmd.Dir = "/"
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return bytes.TrimSpace(buf.Bytes()), err
}

// Running reports whether a server is running on the data directory, and its port.
func (c *Cluster) Running(ctx context.Context) (int, bool) {
	if _, err := c.run(ctx, "pg_ctl", "status", "-D", c.Dir); err != nil {
		return 0, false
	}
	raw, err := os.ReadFile(filepath.Join(c.Dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	lines := strings.Split(string(raw), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	return port, err == nil
}

// Start starts the server on a free loopback port (or reuses a server already
// running on the directory) and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	if port, ok := c.Running(ctx); ok {
		c.Port = port
		if c.upgrade {
			return c.upgradeAuth(ctx)
		}
		return nil
	}
	// A cluster started before by this Cluster comes back on its port, so
	// clients holding its URL reconnect (a restart); a new one takes a free one.
	port := c.Port
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return err
		}
	}
	logFile := filepath.Join(c.Dir, "server.log")
	if out, err := c.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", c.Dir, "-l", logFile, "-o", fmt.Sprintf("-p %d", port)); err != nil {
		tail, _ := os.ReadFile(logFile)
		return fmt.Errorf("pg_ctl start: %w: %s\n%s", err, out, lastLines(tail, 15))
	}
	c.Port = port
	if c.upgrade {
		return c.upgradeAuth(ctx)
	}
	return nil
}

// Stop stops the server; fast mode rolls back open transactions, immediate
// mode (for throwaway clusters) skips the shutdown checkpoint.
func (c *Cluster) Stop(ctx context.Context, immediate bool) error {
	mode := "fast"
	if immediate {
		mode = "immediate"
	}
	if _, ok := c.Running(ctx); !ok {
		return nil
	}
	if out, err := c.run(ctx, "pg_ctl", "stop", "-w", "-t", "60", "-D", c.Dir, "-m", mode); err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return nil
}

// URL is the connection string of the cluster's "postgres" database.
func (c *Cluster) URL(database string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", c.password, c.Port, database)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
