package retention

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/projections"
)

// History retention: in an environment with history_retention_seconds
// set, a webhook is removed whole once its newest event is that old: its
// EventReceived, the streams of its deliveries, and their read-model rows
// (events_view, event_delivery_outcomes, delivery_attempts,
// projected_deliveries, issue_deliveries), in one transaction that records
// a HistoryExpired event (migration 0021 lets that transaction, and no
// other, delete those events).
//
// A webhook is removed only as a whole, never part of a stream, so a
// rebuild from what is left gives the rows live has: every rebuildable
// read model keeps rows per webhook, delivery or attempt. It is held (and
// re-checked by later passes, history_held) while:
//   - any of its deliveries has a job row: still scheduled, or finished less
//     than a minute ago (the engine prunes the row then);
//   - any of its events is newer than the cutoff (a manual retry last week
//     keeps the whole webhook until that retry is old too);
//   - a consumer group (scheduler, read models) has not yet processed one
//     of its events; and a pass waits while the attempts read model, which
//     names the deliveries, is more than readModelLag behind;
//   - a replay is releasing events in the environment.
//
// Races: a retry of one of its deliveries, and a replay's release of it,
// read the EventReceived row FOR SHARE in the transaction that schedules
// the delivery; the pass locks the webhooks' EventReceived rows FOR UPDATE
// before it looks for job rows, so either the retry or release committed
// first (its scheduled job holds the webhook) or it waits and then finds
// the webhook gone (a retry is a 400, a release leaves it out). A rebuild of the read models holds the
// retention lock, so no pass deletes rows under a build.

// HistoryBatch is how many webhooks one history transaction removes by
// default.
const HistoryBatch = 500

type family struct {
	pos        int64 // the EventReceived's position
	deliveries []string
	rows       []int64 // every event of the webhook, its deliveries' included
	hold       bool
}

// historyEnv removes the environment's webhooks older than its history
// retention, from where the last pass stopped and from those held before.
func (r *Retention) historyEnv(ctx context.Context, e env, rep *EnvReport, now time.Time) error {
	cutoff := now.Add(-time.Duration(*e.history) * time.Second)
	rep.HistoryBefore = &cutoff
	if e.archive && r.p.ArchiveDir == "" {
		rep.HistoryHeld = "the environment archives before removal, and serve has no --archive-dir: its history is kept"
		return r.saveHistory(ctx, e, e.historyFrom, e.heldFrom, rep, now)
	}
	// Checked again before every batch: a pass over a large backlog runs
	// long, and a replay may start, or the read model fall behind, meanwhile.
	mayGo := func() ([]offset, bool, error) {
		offsets, err := groupOffsets(ctx, r)
		if err != nil {
			return nil, false, err
		}
		why, err := readModelBehind(ctx, r, attemptsGroup(offsets), r.p.Now().UTC()) // the time now, not the pass's: a phase can run long
		if err == nil && why == "" {
			var running bool
			if running, err = replaying(ctx, r, e); running {
				why = "a replay is releasing events in this environment: its history is kept until the replay has released them all"
			}
		}
		rep.HistoryHeld = why
		return offsets, why == "" && err == nil, err
	}
	end, err := positionAt(ctx, r.p.Pool, cutoff, e.historyFrom)
	if err != nil {
		return err
	}
	// The webhooks held before, from where the last pass stopped re-checking
	// (wrapping around at the end), so long-held ones never starve the others.
	held, heldNext, err := r.heldAfter(ctx, "history_held", e, e.heldFrom, end, 5*r.p.HistoryBatch)
	if err != nil {
		return fmt.Errorf("held webhooks: %w", err)
	}
	for i := 0; i < len(held); i += r.p.HistoryBatch {
		offsets, ok, err := mayGo()
		if err != nil || !ok {
			return errors.Join(err, r.saveHistory(ctx, e, e.historyFrom, e.heldFrom, rep, now))
		}
		if _, _, err := r.removeBatch(ctx, e, sel{positions: held[i:min(len(held), i+r.p.HistoryBatch)]}, offsets, cutoff, now, rep); err != nil {
			return err
		}
	}
	after := e.historyFrom - 1
	phase := time.Now()
	for {
		offsets, ok, err := mayGo()
		if err != nil || !ok {
			// Every webhook up to after is gone or held.
			return errors.Join(err, r.saveHistory(ctx, e, after+1, heldNext, rep, now))
		}
		started := time.Now()
		n, last, err := r.removeBatch(ctx, e, sel{after: after, end: end}, offsets, cutoff, now, rep)
		if err != nil {
			return err
		}
		if n < r.p.HistoryBatch {
			break
		}
		after = last
		if err := r.rest(ctx, phase, started); err != nil {
			return err
		}
	}
	return r.saveHistory(ctx, e, end, heldNext, rep, now)
}

// replaying reports whether a replay is releasing events in the
// environment: it listed them when it was requested and reads them as it
// releases each batch, so neither phase may change them meanwhile.
func replaying(ctx context.Context, r *Retention, e env) (bool, error) {
	var running bool
	if err := r.p.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM replay_jobs WHERE org_id = $1 AND env_id = $2 AND status = 'running' AND released < total)`,
		e.org, e.id).Scan(&running); err != nil {
		return false, fmt.Errorf("running replays: %w", err)
	}
	return running, nil
}

// offset is a consumer group's position in commit order: it has
// processed every event of its types at or before it.
type offset struct {
	types   []string
	tx, pos int64
	started bool // the group has an offset row
}

// attemptsGroup is the offset of the one group that reads
// DeliveryRequested (the attempts read model), which names every delivery.
func attemptsGroup(offsets []offset) offset {
	for _, o := range offsets {
		if slices.Contains(o.types, domain.EvDeliveryRequested) {
			return o
		}
	}
	return offset{}
}

func (o offset) covers(tx, pos int64) bool { return tx < o.tx || (tx == o.tx && pos <= o.pos) }

// read tells whether every consumer group that reads events of type typ
// has processed the one at (tx, pos).
func read(offsets []offset, typ string, tx, pos int64) bool {
	for _, o := range offsets {
		if slices.Contains(o.types, typ) && !o.covers(tx, pos) {
			return false
		}
	}
	return true
}

// readModelLag is how far behind the attempts read model may be for a pass
// to go on: it names every delivery older than that. Below the shortest
// history retention (60 s), and below the minute a finished delivery keeps
// its job row, so a delivery too young to be named still holds its webhook.
const readModelLag = 30 * time.Second

// readModelBehind says why a pass must wait for the attempts read model
// (never started, or its oldest event not yet read older than
// readModelLag); "" when it need not.
func readModelBehind(ctx context.Context, r *Retention, o offset, now time.Time) (string, error) {
	if !o.started {
		return "the read models have not read the log yet: the history is kept until they have", nil
	}
	var oldest time.Time
	err := r.p.Pool.QueryRow(ctx, `SELECT recorded_at FROM events WHERE transaction_id >= $1::text::xid8
		AND (transaction_id, global_position) > ($1::text::xid8, $2) AND event_type = ANY($3)
		ORDER BY transaction_id, global_position LIMIT 1`, strconv.FormatInt(o.tx, 10), o.pos, o.types).Scan(&oldest)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read model lag: %w", err)
	}
	if lag := now.Sub(oldest); lag > readModelLag {
		return fmt.Sprintf("the attempts read model is %s behind the log: the history is kept until it is less than %s behind",
			lag.Round(time.Second), readModelLag), nil
	}
	return "", nil
}

// groupOffsets reads every consumer group's position (a group that has
// processed nothing yet is at the start).
func groupOffsets(ctx context.Context, r *Retention) ([]offset, error) {
	var out []offset
	for _, g := range projections.Groups {
		o := offset{types: g.Types}
		err := r.p.Pool.QueryRow(ctx, `SELECT last_processed_transaction_id::text::bigint, coalesce(offset_acked, 0) FROM consumer_offsets
			WHERE consumer_group = $1`, g.Name).Scan(&o.tx, &o.pos)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("consumer offsets: %w", err)
		}
		o.started = err == nil
		out = append(out, o)
	}
	return out, nil
}

// removeBatch removes up to HistoryBatch webhooks received at positions in
// (after, end), or at the positions given, in one transaction. It returns
// how many webhooks it looked at and the last one's position.
func (r *Retention) removeBatch(ctx context.Context, e env, s sel, offsets []offset, cutoff, now time.Time, rep *EnvReport) (int, int64, error) {
	var found int
	var last int64
	var counted func()
	where, args := `e.global_position > $3 AND e.global_position < $4 ORDER BY e.global_position LIMIT $5`, []any{e.org, e.id, s.after, s.end, r.p.HistoryBatch}
	if s.positions != nil {
		where, args = `e.global_position = ANY($3) ORDER BY e.global_position`, []any{e.org, e.id, s.positions}
	}
	err := pgx.BeginFunc(ctx, r.p.Pool, func(tx pgx.Tx) error {
		// The webhooks, locked: a retry reads its webhook's row FOR SHARE.
		rows, err := tx.Query(ctx, `SELECT e.global_position, e.stream_id FROM events e
			WHERE e.org_id = $1 AND e.env_id = $2 AND e.event_type = 'EventReceived' AND `+where+` FOR UPDATE OF e`, args...)
		fams := map[string]*family{}
		var ids []string
		if _, err := kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
			var f family
			var id string
			err := row.Scan(&f.pos, &id)
			fams[id], ids = &f, append(ids, id)
			last = f.pos
			return struct{}{}, err
		}); err != nil {
			return fmt.Errorf("select webhooks: %w", err)
		}
		found = len(ids)
		if found == 0 {
			return nil
		}
		// Their deliveries, from the read model (every delivery has an
		// attempt row from its DeliveryRequested on).
		byDelivery := map[string]string{}
		// A replay's delivery holds its webhook while the replay's row
		// stays (24 h): its progress counts the replay's attempts.
		rows, err = tx.Query(ctx, `SELECT event_id, delivery_id, bool_or(replay_id IS NOT NULL AND EXISTS (SELECT 1 FROM replay_jobs r WHERE r.id = a.replay_id))
			FROM delivery_attempts a WHERE event_id = ANY($1) GROUP BY event_id, delivery_id`, ids)
		if _, err := kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
			var ev, d string
			var replayed bool
			err := row.Scan(&ev, &d, &replayed)
			if f := fams[ev]; f != nil && err == nil {
				f.deliveries, byDelivery[d] = append(f.deliveries, d), ev
				f.hold = f.hold || replayed
			}
			return struct{}{}, err
		}); err != nil {
			return fmt.Errorf("select deliveries: %w", err)
		}
		// hold holds the webhooks a query names.
		hold := func(what, sql string, args ...any) error {
			rows, err := tx.Query(ctx, sql, args...)
			_, err = kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
				var ev string
				err := row.Scan(&ev)
				if f := fams[ev]; f != nil {
					f.hold = true
				}
				return struct{}{}, err
			})
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		}
		// A delivery with a job row holds its webhook: a scheduled one, and
		// one that finished less than a minute ago (the engine prunes it
		// then). With the read model less than readModelLag behind (checked
		// per pass), every delivery older than that is in the read model
		// above, so a delivery the read model does not name yet still has
		// its row here.
		if err := hold("live deliveries", `SELECT DISTINCT event_id FROM delivery_jobs WHERE event_id = ANY($1)`, ids); err != nil {
			return err
		}
		// Every event of each webhook: all older than the cutoff, all read
		// by every consumer group, all the environment's.
		streams := append([]string(nil), ids...)
		for d := range byDelivery {
			streams = append(streams, d)
		}
		rows, err = tx.Query(ctx, `SELECT e.global_position, e.stream_type, e.event_type, e.stream_id, e.transaction_id::text::bigint,
				e.recorded_at < $2 AND e.org_id = $3 AND e.env_id = $4
			FROM events e WHERE e.stream_id = ANY($1)`, streams, cutoff, e.org, e.id)
		if _, err := kit.CollectRows(rows, err, func(row pgx.Row) (struct{}, error) {
			var pos, xid int64
			var typ, evType, stream string
			var ok bool
			if err := row.Scan(&pos, &typ, &evType, &stream, &xid, &ok); err != nil {
				return struct{}{}, err
			}
			ev := stream
			if typ == domain.StreamDelivery {
				ev = byDelivery[stream]
			} else if typ != domain.StreamEvent {
				ev = "" // a stream id shared by another kind of stream: never ours
			}
			f := fams[ev]
			if f == nil {
				return struct{}{}, fmt.Errorf("event at %d (%s %s) matched no webhook", pos, typ, stream)
			}
			if !ok || !read(offsets, evType, xid, pos) {
				f.hold = true
			}
			f.rows = append(f.rows, pos)
			return struct{}{}, nil
		}); err != nil {
			return fmt.Errorf("select history: %w", err)
		}
		var gone, heldPos, goneWebhookPos []int64
		var goneIDs, goneDeliveries []string
		for _, id := range ids {
			f := fams[id]
			if f.hold {
				heldPos = append(heldPos, f.pos)
				continue
			}
			gone, goneWebhookPos = append(gone, f.rows...), append(goneWebhookPos, f.pos)
			goneIDs, goneDeliveries = append(goneIDs, id), append(goneDeliveries, f.deliveries...)
		}
		if len(heldPos) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO history_held (org_id, env_id, pos) SELECT $1, $2, unnest($3::bigint[]) ON CONFLICT DO NOTHING`,
				e.org, e.id, heldPos); err != nil {
				return fmt.Errorf("hold webhooks: %w", err)
			}
		}
		if len(gone) == 0 {
			return nil
		}
		archive := ""
		if e.archive {
			rows, err := tx.Query(ctx, `SELECT e.global_position, to_jsonb(e) - 'transaction_id' FROM events e
				WHERE e.global_position = ANY($1) ORDER BY e.global_position`, gone)
			cands, err := kit.CollectRows(rows, err, func(row pgx.Row) (candidate, error) {
				var c candidate
				return c, row.Scan(&c.pos, &c.row)
			})
			if err != nil {
				return fmt.Errorf("archive: %w", err)
			}
			if archive, err = r.writeArchive(e, "history-", cands, now); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('hookstream.retention', 'history', true)`); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM events WHERE global_position = ANY($1)`, gone)
		if err != nil {
			return fmt.Errorf("remove history: %w", err)
		}
		if int(tag.RowsAffected()) != len(gone) {
			return fmt.Errorf("remove history: %d of %d events removed", tag.RowsAffected(), len(gone))
		}
		for _, q := range []struct {
			sql, what string
			args      []any
		}{
			// Deliveries before attempts, as a rename's projection updates them
			// (no deadlock); attempts by event (indexed; every attempt carries
			// its webhook's id).
			{`DELETE FROM projected_deliveries WHERE delivery_id = ANY($1)`, "deliveries", []any{goneDeliveries}},
			{`DELETE FROM delivery_attempts WHERE event_id = ANY($1)`, "attempts", []any{goneIDs}},
			{`DELETE FROM issue_deliveries WHERE delivery_id = ANY($1)`, "issue deliveries", []any{goneDeliveries}},
			{`DELETE FROM event_delivery_outcomes WHERE event_id = ANY($1)`, "outcomes", []any{goneIDs}},
			{`DELETE FROM events_view WHERE id = ANY($1)`, "events", []any{goneIDs}},
			{`DELETE FROM history_held WHERE org_id = $1 AND env_id = $2 AND pos = ANY($3)`, "held webhooks", []any{e.org, e.id, goneWebhookPos}},
			{`DELETE FROM retention_held WHERE org_id = $1 AND env_id = $2 AND pos = ANY($3)`, "held payloads", []any{e.org, e.id, gone}},
		} {
			if _, err := tx.Exec(ctx, q.sql, q.args...); err != nil {
				return fmt.Errorf("remove %s: %w", q.what, err)
			}
		}
		minPos, maxPos := gone[0], gone[0]
		for _, p := range gone {
			minPos, maxPos = min(minPos, p), max(maxPos, p)
		}
		if _, err := r.p.Store.Append(ctx, tx, eventstore.StreamAppend{StreamType: domain.StreamRetention, StreamID: kit.NewID(),
			OrgID: e.org, EnvID: e.id, Expected: eventstore.NoStream,
			Events: []eventstore.NewEvent{{Type: domain.EvHistoryExpired, Metadata: eventstore.Metadata{Actor: "retention"},
				Payload: domain.HistoryExpired{Before: cutoff, Webhooks: len(goneIDs), Deliveries: len(goneDeliveries), LogRows: len(gone),
					From: minPos, To: maxPos, Archive: archive, ExpiredAt: now}}},
		}); err != nil {
			return err
		}
		webhooks, deliveries, logRows := len(goneIDs), len(goneDeliveries), len(gone)
		counted = func() {
			rep.Webhooks += webhooks
			rep.Deliveries += deliveries
			rep.LogRows += logRows
			if archive != "" {
				rep.Archives = append(rep.Archives, archive)
			}
			if r.p.OnHistory != nil {
				r.p.OnHistory(webhooks, logRows)
			}
		}
		return nil
	})
	if err == nil && counted != nil {
		counted() // once committed
	}
	return found, last, err
}

// saveHistory records where the next history pass starts (and goes on
// re-checking held webhooks), its totals and the oldest webhook kept.
func (r *Retention) saveHistory(ctx context.Context, e env, next, heldNext int64, rep *EnvReport, now time.Time) error {
	var held int
	if err := r.p.Pool.QueryRow(ctx, `SELECT count(*) FROM history_held WHERE org_id = $1 AND env_id = $2`, e.org, e.id).Scan(&held); err != nil {
		return fmt.Errorf("held webhooks: %w", err)
	}
	rep.WebhooksHeld = held
	// The oldest webhook kept, from the events list (its index).
	if err := r.p.Pool.QueryRow(ctx, `SELECT min(received_at) FROM events_view WHERE org_id = $1 AND env_id = $2`, e.org, e.id).
		Scan(&rep.OldestEventAt); err != nil {
		return fmt.Errorf("oldest webhook: %w", err)
	}
	_, err := r.p.Pool.Exec(ctx, `INSERT INTO retention_state (org_id, env_id, history_from, history_held_from, oldest_event_at, webhooks_removed,
			deliveries_removed, log_rows_removed, last_run)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (org_id, env_id) DO UPDATE SET history_from = excluded.history_from, history_held_from = excluded.history_held_from,
			oldest_event_at = excluded.oldest_event_at,
			webhooks_removed = retention_state.webhooks_removed + excluded.webhooks_removed,
			deliveries_removed = retention_state.deliveries_removed + excluded.deliveries_removed,
			log_rows_removed = retention_state.log_rows_removed + excluded.log_rows_removed, last_run = excluded.last_run`,
		e.org, e.id, next, heldNext, rep.OldestEventAt, rep.Webhooks, rep.Deliveries, rep.LogRows, now)
	return err
}
