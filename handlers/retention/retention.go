// Package retention expires webhook payloads once their environment's
// retention has passed: the body, headers and query of each EventReceived
// and the request and response headers and body of each DeliveryAttempted
// are replaced by an expired form that keeps every id, size and a hash of
// the body, so audit, metrics and rebuilds still work. It is the one
// change the events table allows (migration 0015), made by the retention
// pass alone, one batch per transaction, each batch recorded as a
// PayloadsExpired event.
package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/kit"
)

// Params configure the retention pass.
type Params struct {
	Pool  *pgxpool.Pool
	Store *eventstore.Store
	Log   *slog.Logger
	Now   func() time.Time
	// Batch is how many payloads one transaction expires (default 2000).
	Batch int
	// Interval is how often Loop runs a pass (default 1 minute).
	Interval time.Duration
	// ArchiveDir receives the NDJSON archives of environments that archive
	// their payloads before expiry; without it their payloads are kept
	// (fail closed: nothing is removed that was to be archived).
	ArchiveDir string
	// OnBatch, when set, is told each batch's counts (metrics).
	OnBatch func(events, attempts int, bytes int64)
	// HistoryBatch is how many webhooks one history transaction removes
	// (default HistoryBatch).
	HistoryBatch int
	// OnHistory, when set, is told each history batch's counts (metrics).
	OnHistory func(webhooks, logRows int)
}

// Retention runs retention passes.
type Retention struct{ p Params }

// New fills the defaults.
func New(p Params) *Retention {
	kit.Defaults(&p.Now, &p.Log, &p.Store)
	if p.Batch <= 0 {
		p.Batch = 2000
	}
	if p.HistoryBatch <= 0 {
		p.HistoryBatch = HistoryBatch
	}
	if p.Interval <= 0 {
		p.Interval = time.Minute
	}
	return &Retention{p: p}
}

// EnvReport is what one pass did in one environment.
type EnvReport struct {
	OrgID            string     `json:"org_id"`
	EnvID            string     `json:"env_id"`
	RetentionSeconds int64      `json:"retention_seconds"`
	Before           time.Time  `json:"before"`
	Events           int        `json:"events_expired"`
	Attempts         int        `json:"attempts_expired"`
	Bytes            int64      `json:"bytes_reclaimed"`
	Archives         []string   `json:"archives,omitempty"`
	Held             string     `json:"held,omitempty"` // why payloads due were kept (archive not configured)
	OldestPayloadAt  *time.Time `json:"oldest_payload_at"`
	// History: set when the environment bounds its history.
	HistoryRetentionSeconds *int64     `json:"history_retention_seconds"`
	HistoryBefore           *time.Time `json:"history_before,omitempty"`
	Webhooks                int        `json:"webhooks_removed"`
	Deliveries              int        `json:"deliveries_removed"`
	LogRows                 int        `json:"log_rows_removed"`
	WebhooksHeld            int        `json:"webhooks_held"`
	HistoryHeld             string     `json:"history_held,omitempty"` // why the whole history was kept
	OldestEventAt           *time.Time `json:"oldest_event_at,omitempty"`
}

// Report is one pass.
type Report struct {
	// Ran is false when another process held the pass's lock.
	Ran      bool          `json:"ran"`
	Envs     []EnvReport   `json:"environments"`
	Duration time.Duration `json:"-"`
}

// lockKey serialises passes across processes (session advisory lock).
const lockKey = `hashtext('hookstream:retention')`

// Loop runs a pass every Interval until ctx ends.
func (r *Retention) Loop(ctx context.Context) {
	t := time.NewTicker(r.p.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rep, err := r.Run(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.p.Log.Error("retention pass", "err", err)
			}
			continue
		}
		for _, e := range rep.Envs {
			if e.Events+e.Attempts > 0 || e.Held != "" {
				r.p.Log.Info("retention", "org_id", e.OrgID, "env_id", e.EnvID, "events_expired", e.Events, "attempts_expired", e.Attempts,
					"bytes_reclaimed", e.Bytes, "held", e.Held)
			}
			if e.Webhooks > 0 || e.HistoryHeld != "" {
				r.p.Log.Info("history retention", "org_id", e.OrgID, "env_id", e.EnvID, "webhooks_removed", e.Webhooks,
					"log_rows_removed", e.LogRows, "webhooks_held", e.WebhooksHeld, "held", e.HistoryHeld)
			}
		}
	}
}

type env struct {
	org, id     string
	retention   int64
	archive     bool
	from        int64
	history     *int64 // seconds; nil: kept forever
	historyFrom int64
	heldFrom    int64 // where re-checking history_held goes on
	payloadHeld int64 // where re-checking retention_held goes on
}

// Run makes one pass over every environment, unless another process is
// making one.
func (r *Retention) Run(ctx context.Context) (Report, error) {
	started := r.p.Now()
	conn, err := r.p.Pool.Acquire(ctx)
	if err != nil {
		return Report{}, err
	}
	defer conn.Release()
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+lockKey+`)`).Scan(&got); err != nil {
		return Report{}, fmt.Errorf("retention lock: %w", err)
	}
	if !got {
		return Report{}, nil
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(`+lockKey+`)`); err != nil {
			conn.Conn().Close(context.Background()) // a lost unlock ends with the session
		}
	}()
	rows, err := r.p.Pool.Query(ctx, `SELECT e.org_id, e.id, e.payload_retention_seconds, e.archive_payloads, coalesce(s.scan_from, 0),
			e.history_retention_seconds, coalesce(s.history_from, 0), coalesce(s.history_held_from, 0), coalesce(s.payload_held_from, 0)
		FROM environments e LEFT JOIN retention_state s ON s.org_id = e.org_id AND s.env_id = e.id ORDER BY e.org_id, e.id`)
	envs, err := kit.CollectRows(rows, err, func(row pgx.Row) (env, error) {
		var e env
		return e, row.Scan(&e.org, &e.id, &e.retention, &e.archive, &e.from, &e.history, &e.historyFrom, &e.heldFrom, &e.payloadHeld)
	})
	if err != nil {
		return Report{}, fmt.Errorf("retention: environments: %w", err)
	}
	rep := Report{Ran: true}
	for _, e := range envs {
		er := EnvReport{OrgID: e.org, EnvID: e.id, RetentionSeconds: e.retention, HistoryRetentionSeconds: e.history}
		// With a history retention no longer than the payloads', history
		// goes first: a finished webhook past its cutoff goes whole, and
		// expiring its payloads just before would rewrite every row it is
		// about to delete (that was all the payload phase did in such an
		// environment). With a longer one, payloads go first: they are due
		// long before their webhook's history, and a history backlog (the
		// setting just made on a large environment) must not hold them past
		// their retention. Both cutoffs are taken from one time: a payload
		// cutoff taken after a long history phase would run ahead of it
		// and rewrite the payloads of webhooks the next pass removes whole
		// (a soak at 550/s did that to 19 batches of 2,000 in its first passes).
		now := r.p.Now().UTC()
		historyFirst := e.history != nil && *e.history <= e.retention
		history := func() error {
			if err := r.historyEnv(ctx, e, &er, now); err != nil {
				return fmt.Errorf("retention: environment %s: history: %w", e.id, err)
			}
			return nil
		}
		if historyFirst {
			if err := history(); err != nil {
				return rep, err
			}
		}
		if err := r.expireEnv(ctx, e, &er, now); err != nil {
			return rep, fmt.Errorf("retention: environment %s: %w", e.id, err)
		}
		if e.history != nil && !historyFirst {
			if err := history(); err != nil {
				return rep, err
			}
		}
		rep.Envs = append(rep.Envs, er)
	}
	rep.Duration = r.p.Now().Sub(started)
	return rep, nil
}

// expirable is the filter of payloads that may expire: not yet expired, and
// not of a delivery still scheduled (its body is still to be sent; a
// delivery's attempts go with it).
const expirable = `e.event_type IN ('EventReceived', 'DeliveryAttempted') AND NOT e.payload ? 'payload_expired_at'`

const notLive = `NOT (e.event_type = 'EventReceived' AND EXISTS (SELECT 1 FROM delivery_jobs j WHERE j.event_id = e.stream_id AND j.state = 'scheduled'))
	AND NOT (e.event_type = 'DeliveryAttempted' AND EXISTS (SELECT 1 FROM delivery_jobs j WHERE j.delivery_id = e.stream_id AND j.state = 'scheduled'))`

func (r *Retention) expireEnv(ctx context.Context, e env, rep *EnvReport, now time.Time) error {
	cutoff := now.Add(-time.Duration(e.retention) * time.Second)
	rep.Before = cutoff
	running, err := replaying(ctx, r, e)
	if err != nil {
		return err
	}
	switch {
	case running:
		// Its events are listed when the replay is requested and read when
		// each batch is released (at most a few hours later).
		rep.Held = "a replay is releasing events in this environment: payloads are kept until it has released them all"
		return r.saveState(ctx, e, e.from, e.payloadHeld, cutoff, rep, now)
	case e.archive && r.p.ArchiveDir == "":
		rep.Held = "the environment archives its payloads before expiry, and serve has no --archive-dir: payloads are kept"
		return r.saveState(ctx, e, e.from, e.payloadHeld, cutoff, rep, now)
	}
	end, err := positionAt(ctx, r.p.Pool, cutoff, e.from)
	if err != nil {
		return err
	}
	// The payloads held back before, whose delivery may have finished, from
	// where the last pass stopped re-checking (wrapping around at the end):
	// a long-held backlog (a destination paused for days) never keeps the
	// others past their retention.
	held, heldNext, err := r.heldAfter(ctx, "retention_held", e, e.payloadHeld, end, 5*r.p.Batch)
	if err != nil {
		return fmt.Errorf("held payloads: %w", err)
	}
	if len(held) > 0 {
		for i := 0; i < len(held); i += r.p.Batch {
			if _, _, err := r.expireBatch(ctx, e, sel{positions: held[i:min(len(held), i+r.p.Batch)]}, cutoff, now, rep); err != nil {
				return err
			}
		}
		if _, err := r.p.Pool.Exec(ctx, `DELETE FROM retention_held h USING events e WHERE h.org_id = $1 AND h.env_id = $2 AND h.pos = ANY($3)
			AND e.global_position = h.pos AND e.payload ? 'payload_expired_at'`, e.org, e.id, held); err != nil {
			return fmt.Errorf("held payloads: %w", err)
		}
	}
	// The log written since the last pass, up to the cutoff.
	after := e.from - 1
	phase := time.Now()
	for {
		started := time.Now()
		n, last, err := r.expireBatch(ctx, e, sel{after: after, end: end}, cutoff, now, rep)
		if err != nil {
			return err
		}
		if n < r.p.Batch {
			break
		}
		after = last
		if err := r.rest(ctx, phase, started); err != nil {
			return err
		}
	}
	// What that part of the log held back (live deliveries, or an event
	// recorded out of order past the cutoff) is re-checked by later passes.
	if _, err := r.p.Pool.Exec(ctx, `INSERT INTO retention_held (org_id, env_id, pos)
		SELECT e.org_id, e.env_id, e.global_position FROM events e
		WHERE e.global_position >= $1 AND e.global_position < $2 AND e.org_id = $3 AND e.env_id = $4 AND `+expirable+`
		ON CONFLICT DO NOTHING`, e.from, end, e.org, e.id); err != nil {
		return fmt.Errorf("hold payloads: %w", err)
	}
	return r.saveState(ctx, e, end, heldNext, cutoff, rep, now)
}

// rest waits between two batches of a phase that began at phase, the last
// batch at batch: as long as that batch took, so a pass takes at most half
// the time and deliveries share the database with it; once the phase has
// run longer than the pass interval, a quarter of that. A phase that long
// removes less at half time than arrives meanwhile (it found more than an
// interval's worth, and more arrived while it ran): at half time its
// backlog, and the disk, would grow without bound on a busy database, as the
// 550/s soak measured (the log's live rows +11% in 9 minutes). Four fifths
// of the time removes 1.6 times as much and still leaves deliveries a share.
func (r *Retention) rest(ctx context.Context, phase, batch time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(restAfter(time.Since(batch), time.Since(phase), r.p.Interval)):
		return nil
	}
}

// restAfter is rest's pause after a batch that took took, in a phase that
// has run for running, with passes every interval.
func restAfter(took, running, interval time.Duration) time.Duration {
	if running > interval {
		return took / 4
	}
	return took
}

// heldAfter lists up to limit positions held back in table (retention_held
// or history_held, a constant) after from and below end, oldest first, and
// where the next pass goes on re-checking: the last one listed when the
// limit was reached, else 0 (wrapping around).
func (r *Retention) heldAfter(ctx context.Context, table string, e env, from, end int64, limit int) (held []int64, next int64, err error) {
	rows, err := r.p.Pool.Query(ctx, `SELECT pos FROM `+table+` WHERE org_id = $1 AND env_id = $2 AND pos > $3 AND pos < $4
		ORDER BY pos LIMIT $5`, e.org, e.id, from, end, limit)
	held, err = kit.CollectRows(rows, err, func(row pgx.Row) (int64, error) {
		var p int64
		return p, row.Scan(&p)
	})
	if len(held) == limit {
		next = held[len(held)-1]
	}
	return held, next, err
}

// saveState records where the next pass starts, the pass's totals and the
// oldest payload kept: the oldest held back past the cutoff, else the
// cutoff itself (no payload is older) when the environment has events.
func (r *Retention) saveState(ctx context.Context, e env, next, heldNext int64, cutoff time.Time, rep *EnvReport, now time.Time) error {
	var oldest *time.Time
	if err := r.p.Pool.QueryRow(ctx, `SELECT coalesce(
			(SELECT min(e.recorded_at) FROM retention_held h JOIN events e ON e.global_position = h.pos
				WHERE h.org_id = $1 AND h.env_id = $2 AND e.event_type = 'EventReceived'),
			CASE WHEN EXISTS (SELECT 1 FROM list_counts WHERE org_id = $1 AND env_id = $2 AND list = 'events' AND n > 0)
				THEN least($3::timestamptz, (SELECT oldest_payload_at FROM retention_state WHERE org_id = $1 AND env_id = $2 AND $4)) END)`,
		e.org, e.id, cutoff, rep.Held != "").Scan(&oldest); err != nil {
		return fmt.Errorf("oldest payload: %w", err)
	}
	rep.OldestPayloadAt = oldest
	_, err := r.p.Pool.Exec(ctx, `INSERT INTO retention_state (org_id, env_id, scan_from, oldest_payload_at, events_expired, attempts_expired, bytes_reclaimed,
			last_run, payload_held_from)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (org_id, env_id) DO UPDATE SET scan_from = excluded.scan_from, oldest_payload_at = excluded.oldest_payload_at,
			payload_held_from = excluded.payload_held_from,
			events_expired = retention_state.events_expired + excluded.events_expired,
			attempts_expired = retention_state.attempts_expired + excluded.attempts_expired,
			bytes_reclaimed = retention_state.bytes_reclaimed + excluded.bytes_reclaimed, last_run = excluded.last_run`,
		e.org, e.id, next, oldest, rep.Events, rep.Attempts, rep.Bytes, now, heldNext)
	return err
}

// positionAt is the first global position at or after from whose event was
// recorded at or after t (the log's end when none): a binary search by
// primary key, as recorded_at follows the position.
func positionAt(ctx context.Context, pool *pgxpool.Pool, t time.Time, from int64) (int64, error) {
	var hi int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(global_position), 0) + 1 FROM events`).Scan(&hi); err != nil {
		return 0, err
	}
	lo := max(from, 1)
	for lo < hi {
		mid := lo + (hi-lo)/2
		var at time.Time
		err := pool.QueryRow(ctx, `SELECT recorded_at FROM events WHERE global_position >= $1 ORDER BY global_position LIMIT 1`, mid).Scan(&at)
		if errors.Is(err, pgx.ErrNoRows) {
			hi = mid
			continue
		}
		if err != nil {
			return 0, err
		}
		if at.Before(t) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, nil
}

type candidate struct {
	pos       int64
	eventType string
	size      int64
	row       json.RawMessage // the whole event, when archiving
}

// expireBatch expires up to Batch payloads at positions in (after, end),
// in one transaction with a PayloadsExpired event. It returns how many it
// found and the last position.
// sel picks the payloads of a batch: the log between two positions, or
// the positions given.
type sel struct {
	after, end int64
	positions  []int64
}

func (r *Retention) expireBatch(ctx context.Context, e env, s sel, cutoff, now time.Time, rep *EnvReport) (int, int64, error) {
	var found int
	var last int64
	var counted func()
	where, args := `e.global_position > $6 AND e.global_position < $7`, []any{e.org, e.id, cutoff, r.p.Batch, e.archive, s.after, s.end}
	if s.positions != nil {
		where, args = `e.global_position = ANY($6)`, []any{e.org, e.id, cutoff, r.p.Batch, e.archive, s.positions}
	}
	err := pgx.BeginFunc(ctx, r.p.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT e.global_position, e.event_type, pg_column_size(e.payload),
				CASE WHEN $5 THEN to_jsonb(e) - 'transaction_id' END
			FROM events e
			WHERE `+where+` AND e.org_id = $1 AND e.env_id = $2 AND e.recorded_at < $3
				AND `+expirable+` AND `+notLive+`
			ORDER BY e.global_position LIMIT $4
			FOR UPDATE OF e SKIP LOCKED`, args...)
		cands, err := kit.CollectRows(rows, err, func(row pgx.Row) (candidate, error) {
			var c candidate
			return c, row.Scan(&c.pos, &c.eventType, &c.size, &c.row)
		})
		if err != nil {
			return fmt.Errorf("select payloads: %w", err)
		}
		found = len(cands)
		if found == 0 {
			return nil
		}
		last = cands[found-1].pos
		positions := make([]int64, found)
		var before int64
		for i, c := range cands {
			positions[i] = c.pos
			before += c.size
		}
		archive := ""
		if e.archive {
			if archive, err = r.writeArchive(e, "", cands, now); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('hookstream.retention', 'on', true)`); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `UPDATE events e SET payload = hookstream_expired_payload(e.event_type, e.payload, $2)
			WHERE e.global_position = ANY($1) RETURNING e.event_type, pg_column_size(e.payload)`, positions, now)
		type expired struct {
			eventType string
			size      int64
		}
		done, err := kit.CollectRows(rows, err, func(row pgx.Row) (expired, error) {
			var x expired
			return x, row.Scan(&x.eventType, &x.size)
		})
		if err != nil {
			return fmt.Errorf("expire payloads: %w", err)
		}
		// The attempts read model keeps no copy of an attempt's headers and
		// body: it reads them from the event just expired (migration 0024).
		var events, attempts int
		var afterSize int64
		for _, x := range done {
			afterSize += x.size
			if x.eventType == domain.EvEventReceived {
				events++
			} else {
				attempts++
			}
		}
		bytes := max(0, before-afterSize)
		if _, err := r.p.Store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamRetention, StreamID: kit.NewID(),
			OrgID: e.org, EnvID: e.id, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvPayloadsExpired, Metadata: eventstore.Metadata{Actor: "retention"},
				Payload: domain.PayloadsExpired{Before: cutoff, Events: events, Attempts: attempts, Bytes: bytes, Archive: archive, ExpiredAt: now}}},
		}); err != nil {
			return err
		}
		rep.Events += events
		rep.Attempts += attempts
		rep.Bytes += bytes
		if archive != "" {
			rep.Archives = append(rep.Archives, archive)
		}
		counted = func() {
			if r.p.OnBatch != nil {
				r.p.OnBatch(events, attempts, bytes)
			}
		}
		return nil
	})
	if err == nil && counted != nil {
		counted() // once committed
	}
	return found, last, err
}

// writeArchive writes the batch's events, whole, as NDJSON under
// ArchiveDir/ORG/ENV/DAY/[PREFIX]FIRST-LAST.ndjson (0600), synced before the
// payloads (or the history, prefix "history-") are touched. A batch retried after a failed commit writes its
// file again (same name): the archive holds each payload at least once.
func (r *Retention) writeArchive(e env, prefix string, cands []candidate, now time.Time) (string, error) {
	dir := filepath.Join(r.p.ArchiveDir, e.org, e.id, now.Format("2006-01-02"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("archive: %w", err)
	}
	name := filepath.Join(dir, fmt.Sprintf("%s%020d-%020d.ndjson", prefix, cands[0].pos, cands[len(cands)-1].pos))
	tmp, err := os.CreateTemp(dir, ".archive-*")
	if err != nil {
		return "", fmt.Errorf("archive: %w", err)
	}
	defer os.Remove(tmp.Name())
	for _, c := range cands {
		if _, err := tmp.Write(append(c.row, '\n')); err != nil {
			tmp.Close()
			return "", fmt.Errorf("archive: %w", err)
		}
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", fmt.Errorf("archive: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("archive: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("archive: %w", err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return "", fmt.Errorf("archive: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return name, nil
}

// EnvStatus is an environment's retention settings and state.
type EnvStatus struct {
	OrgID            string     `json:"org_id"`
	EnvID            string     `json:"env_id"`
	Name             string     `json:"name"`
	RetentionSeconds int64      `json:"retention_seconds"`
	ArchivePayloads  bool       `json:"archive_payloads"`
	OldestPayloadAt  *time.Time `json:"oldest_payload_at"`
	EventsExpired    int64      `json:"events_expired"`
	AttemptsExpired  int64      `json:"attempts_expired"`
	BytesReclaimed   int64      `json:"bytes_reclaimed"`
	LastRun          *time.Time `json:"last_run"`
	// History: HistoryRetentionSeconds nil keeps it forever.
	HistoryRetentionSeconds *int64     `json:"history_retention_seconds"`
	OldestEventAt           *time.Time `json:"oldest_event_at"`
	WebhooksRemoved         int64      `json:"webhooks_removed"`
	DeliveriesRemoved       int64      `json:"deliveries_removed"`
	LogRowsRemoved          int64      `json:"log_rows_removed"`
}

// Status lists every environment's retention as the last pass left it.
func Status(ctx context.Context, pool *pgxpool.Pool) ([]EnvStatus, error) {
	rows, err := pool.Query(ctx, `SELECT e.org_id, e.id, e.name, e.payload_retention_seconds, e.archive_payloads, s.oldest_payload_at,
			coalesce(s.events_expired, 0), coalesce(s.attempts_expired, 0), coalesce(s.bytes_reclaimed, 0), s.last_run,
			e.history_retention_seconds, s.oldest_event_at, coalesce(s.webhooks_removed, 0), coalesce(s.deliveries_removed, 0),
			coalesce(s.log_rows_removed, 0)
		FROM environments e LEFT JOIN retention_state s ON s.org_id = e.org_id AND s.env_id = e.id ORDER BY e.org_id, e.created_at`)
	return kit.CollectRows(rows, err, func(row pgx.Row) (EnvStatus, error) {
		var s EnvStatus
		return s, row.Scan(&s.OrgID, &s.EnvID, &s.Name, &s.RetentionSeconds, &s.ArchivePayloads, &s.OldestPayloadAt,
			&s.EventsExpired, &s.AttemptsExpired, &s.BytesReclaimed, &s.LastRun,
			&s.HistoryRetentionSeconds, &s.OldestEventAt, &s.WebhooksRemoved, &s.DeliveriesRemoved, &s.LogRowsRemoved)
	})
}
