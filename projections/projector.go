package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/internal/wake"
)

// Projection is one read model the projector keeps: its consumer group
// (whose offset row it advances), the event types it uses, and the pure
// function that folds one event into statements (the same function rebuild
// applies, so live and rebuilt read models are equal). The projector reads
// each EventReceived without the webhook's body, headers and query
// (eventstore.ReceivedPayloadFields): no read model keeps them (GET
// /v1/events/{id} reads them from the log), and reading them back was the
// projector's largest cost with large bodies.
type Projection struct {
	Group string
	Types []string
	Apply func(eventstore.Event) ([]eventstore.Statement, error)
	// Batch, when set, folds a run of events at once into the same rows as
	// Apply one at a time, in fewer statements.
	Batch func([]eventstore.Event) ([]eventstore.Statement, error)
}

// ReadModels are the projections the engine keeps live.
var ReadModels = []Projection{
	{GroupDeliveryAttempts, DeliveryAttemptsEvents, DeliveryAttempts, DeliveryAttemptsBatch},
	{GroupEvents, EventsEvents, Events, EventsBatch},
}

// ProjectorParams configure a Projector.
type ProjectorParams struct {
	Pool        *pgxpool.Pool
	Projections []Projection // default ReadModels
	Log         *slog.Logger
	Now         func() time.Time
	// BatchSize is how many events one transaction reads (default 500).
	// While the projector is behind (a batch came back full) each batch
	// doubles, up to MaxBatchSize (default 8×BatchSize): set-based
	// statements cost far less per event in large batches, so a projector
	// that fell behind under load catches up instead of falling further.
	// After a batch that was not full, the next reads up to twice as many
	// events as it did (at least BatchSize), so what a Pace gathers under
	// load comes in one batch.
	BatchSize    int
	MaxBatchSize int
	// MaxIdle is the longest wait between reads when the log is quiet
	// (default 1s); Wake cuts a wait short.
	MaxIdle time.Duration
	// Pace is the wait after a batch that was not full (default 200ms),
	// which Wake does not cut short (Hurry does): a trickle of events is
	// folded in batches, not one transaction per event. It delays the read
	// models by at most this much. It is twice the delivery handler's record window
	// (100 ms), so most deliveries' attempts land in the batch that holds
	// their webhook: their attempt and event rows are written once, not
	// inserted pending and then updated. At 150 webhooks/s, 2,000 webhooks:
	// 50 ms, 9,640 statements in all (pg_stat_statements, BEGIN and COMMIT
	// included); 100 ms, 8,420, with half the attempts written twice; and
	// by make profile, 200 ms against 100: 3.8 statements per webhook
	// against 4.2, 0.12–0.22 attempts written twice against 0.54.
	Pace time.Duration
	// Wake tells waiting retries that attempts were projected (default: a
	// notifier of its own on Pool).
	Wake *wake.Notifier
}

// Projector keeps several read models from one read of the log: each batch
// is read once, in commit order below the commit-safe horizon, folded by
// every projection that has not seen it, and written with the projections'
// offsets in one transaction, its statements pipelined in one round trip.
// Each projection keeps its own consumer-group offset row, locked while a
// batch is applied, so `projections rebuild` pauses it exactly as it pauses
// a Watermill consumer. An event a projection fails on stops that batch
// before it (the error is recorded for `projections status`) and is read
// again; the events before it are committed.
type Projector struct {
	p    ProjectorParams
	wake chan struct{}
	// hurry cuts the Pace wait short too (Hurry).
	hurry chan struct{}
	// retryAt holds back a projection that failed until then, so the others
	// go on past the event it stopped at. Run's goroutine only.
	retryAt map[string]time.Time
	// limit is how many events the next batch reads. Run's goroutine only.
	limit int
}

// stuckRetry is how long a projection that failed waits before it tries the
// event again.
const stuckRetry = time.Second

// NewProjector fills defaults.
func NewProjector(p ProjectorParams) *Projector {
	if p.Projections == nil {
		p.Projections = ReadModels
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.BatchSize <= 0 {
		p.BatchSize = 500
	}
	if p.MaxBatchSize < p.BatchSize {
		p.MaxBatchSize = 8 * p.BatchSize
	}
	if p.MaxIdle <= 0 {
		p.MaxIdle = time.Second
	}
	if p.Pace <= 0 {
		p.Pace = 200 * time.Millisecond
	}
	if p.Wake == nil {
		p.Wake = wake.New(p.Pool)
	}
	eventstore.KeepRecent() // this process's appends are folded from their values (eventstore/recent.go)
	return &Projector{p: p, limit: p.BatchSize, wake: make(chan struct{}, 1), hurry: make(chan struct{}, 1), retryAt: map[string]time.Time{}}
}

// Wake tells the projector that events were committed; it never blocks.
func (pr *Projector) Wake() {
	select {
	case pr.wake <- struct{}{}:
	default:
	}
}

// Hurry is Wake that also cuts the Pace wait short: someone waits for
// what was just written (a manual retry's API call for its attempt).
func (pr *Projector) Hurry() {
	select {
	case pr.hurry <- struct{}{}:
	default:
	}
}

// Run projects until ctx ends. It polls after a quiet read, doubling the
// wait from 1 ms up to MaxIdle, and reads again at once after a full batch
// or a Wake.
func (pr *Projector) Run(ctx context.Context) error {
	for {
		err := pr.ensureOffsets(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		pr.p.Log.Error("projector: create offsets; trying again", "err", err) // the database may be starting
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pr.p.MaxIdle):
		}
	}
	idle := time.Millisecond
	for {
		n, err := pr.Step(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			pr.p.Log.Error("projector", "err", err)
			idle, pr.limit = pr.p.MaxIdle, pr.p.BatchSize
		case n >= pr.limit:
			idle = time.Millisecond
			pr.limit = min(2*pr.limit, pr.p.MaxBatchSize) // behind: read more at once
			continue
		case n > 0:
			idle = time.Millisecond
			// The next batch, after the Pace, may read twice what this one
			// did: under load the events of a Pace come in one batch, not
			// cut into BatchSize pieces. A cut between a webhook and its
			// delivery's record writes their rows twice (pending, then
			// updated).
			pr.limit = max(pr.p.BatchSize, min(2*n, pr.p.MaxBatchSize))
			t := time.NewTimer(pr.p.Pace)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-pr.hurry:
				t.Stop()
			case <-t.C:
			}
			continue
		default:
			idle = min(idle*2, pr.p.MaxIdle)
		}
		t := time.NewTimer(idle)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-pr.wake:
			t.Stop()
		case <-pr.hurry:
			t.Stop()
		case <-t.C:
		}
	}
}

// Step applies one batch and returns how many events it read.
func (pr *Projector) Step(ctx context.Context) (int, error) {
	var read int
	var failures []failure
	var notify bool
	active := make([]bool, len(pr.p.Projections))
	err := pgx.BeginFunc(ctx, pr.p.Pool, func(tx pgx.Tx) error {
		offsets, err := pr.lockOffsets(ctx, tx)
		if err != nil {
			return err
		}
		// Read from the earliest offset of the projections not held back.
		now := pr.p.Now()
		var from *eventstore.Position
		for i, p := range pr.p.Projections {
			if !now.Before(pr.retryAt[p.Group]) {
				active[i] = true
				if from == nil || less(offsets[i], *from) {
					from = &offsets[i]
				}
			}
		}
		if from == nil {
			return nil
		}
		// What this process appended comes as its appenders' values, the
		// rest as the JSON of the types a projection folds.
		evs, err := eventstore.ReadFolded(ctx, tx, eventstore.RangeQuery{After: *from, Limit: pr.limit, UntilTx: -1, WithoutMetadata: true, WithoutBodies: true},
			pr.folds)
		if err != nil {
			return err
		}
		read = len(evs)
		if read == 0 {
			return nil
		}
		plan := pr.fold(evs, offsets, active)
		failures = plan.failures
		notify = attempted(evs) // waiting retries re-read after the commit
		if len(evs) == 1 {
			// One event: each projection in its own savepoint, so a statement
			// one projection fails on holds back that projection only.
			for i, stmts := range plan.stmts {
				if len(stmts) == 0 {
					continue
				}
				if err := inSavepoint(ctx, tx, stmts); err != nil {
					failures = append(failures, failure{group: pr.p.Projections[i].Group, event: evs[0], err: err})
					plan.last[i] = offsets[i]
				}
			}
		} else {
			var all []eventstore.Statement
			for _, stmts := range plan.stmts {
				all = append(all, stmts...)
			}
			if err := exec(ctx, tx, all); err != nil {
				return errRetrySmaller // the batch rolled back: go one event at a time
			}
		}
		return pr.advance(ctx, tx, offsets, plan.last)
	})
	if errors.Is(err, errRetrySmaller) {
		return pr.stepOne(ctx)
	}
	for _, f := range failures {
		pr.retryAt[f.group] = pr.p.Now().Add(stuckRetry)
		pr.recordFailure(ctx, f)
	}
	if err == nil {
		for i, p := range pr.p.Projections {
			if active[i] && !failed(failures, p.Group) {
				delete(pr.retryAt, p.Group)
			}
		}
		if notify {
			pr.p.Wake.Signal(ProjectedChannel)
		}
	}
	if err != nil {
		return read, fmt.Errorf("project: %w", err)
	}
	if len(failures) > 0 {
		f := failures[0]
		return read, fmt.Errorf("project: %s stopped at event %s: %w", f.group, f.event.EventID, f.err)
	}
	return read, nil
}

var errRetrySmaller = errors.New("a statement of the batch failed")

type failure struct {
	group string
	event eventstore.Event
	err   error
}

// stepOne applies the next event alone (after a batch failed), so the
// events before a failing one are committed and the failure is attributed.
func (pr *Projector) stepOne(ctx context.Context) (int, error) {
	saved := pr.limit
	pr.limit = 1
	defer func() { pr.limit = saved }()
	return pr.Step(ctx)
}

// batchPlan is what one batch does per projection: its statements, the
// position it reaches, and the events it could not fold.
type batchPlan struct {
	stmts    [][]eventstore.Statement
	last     []eventstore.Position
	failures []failure
}

// fold folds the batch into each projection that has not seen its events.
// A projection stops at the first event it cannot fold (its offset stays
// before it, so it is read again); the others go on.
func (pr *Projector) fold(evs []eventstore.Event, offsets []eventstore.Position, active []bool) batchPlan {
	n := len(pr.p.Projections)
	plan := batchPlan{stmts: make([][]eventstore.Statement, n), last: append([]eventstore.Position(nil), offsets...)}
	stopped := make([]bool, n)
	// Set-based first: a projection whose batch form folds its whole run
	// is done; one that fails is folded one event at a time below, which
	// finds the event it stops at.
	for i, p := range pr.p.Projections {
		if !active[i] || p.Batch == nil {
			continue
		}
		var mine []eventstore.Event
		for _, ev := range evs {
			if less(offsets[i], ev.Position()) && wants(p.Types, ev.Type) {
				mine = append(mine, ev)
			}
		}
		s, err := p.Batch(mine)
		if err != nil {
			continue
		}
		plan.stmts[i] = s
		if last := evs[len(evs)-1].Position(); less(offsets[i], last) {
			plan.last[i] = last
		}
		stopped[i] = true // folded: nothing left to do one event at a time
	}
	for _, ev := range evs {
		pos := ev.Position()
		for i, p := range pr.p.Projections {
			if !active[i] || stopped[i] || !less(offsets[i], pos) {
				continue
			}
			if wants(p.Types, ev.Type) {
				s, err := p.Apply(ev)
				if err != nil {
					stopped[i] = true
					plan.failures = append(plan.failures, failure{group: p.Group, event: ev, err: err})
					continue
				}
				plan.stmts[i] = append(plan.stmts[i], s...)
			}
			plan.last[i] = pos
		}
	}
	return plan
}

func failed(fs []failure, group string) bool {
	for _, f := range fs {
		if f.group == group {
			return true
		}
	}
	return false
}

// folds reports whether a projection folds events of type t.
func (pr *Projector) folds(t string) bool {
	for _, p := range pr.p.Projections {
		if wants(p.Types, t) {
			return true
		}
	}
	return false
}

func wants(types []string, t string) bool {
	for _, w := range types {
		if w == t {
			return true
		}
	}
	return false
}

// projectorSettings are the settings of the projector's transaction, set by
// the statement that locks the offsets (two columns of its result):
//
//   - Its commit does not wait for the WAL flush: read models and their
//     offsets are derived from the log and written in one transaction, so a
//     crash loses both together and they are projected again.
//   - No sequential scans. Every statement a projection runs finds its rows
//     through an index (by key: a delivery, an attempt, an event id; a
//     rename by destination or connection), but on a table that autovacuum
//     has not analyzed yet (a new installation, the first minute of every
//     benchmark run) the planner prices an index scan for a handful of keys
//     above a scan of the whole table, and kept doing so as the table grew:
//     at 150 webhooks/s a projected attempt's insert scanned all of
//     projected_deliveries for its delivery's names, and the status update
//     all of events_view, for each batch. Analyzing the read models as they
//     grow costs more than it saves (5196e1a). The setting prices sequential
//     scans out, so the planner takes an index wherever one applies,
//     whatever the statistics say; a statement with none would still scan.
//     The statement that sets it is planned before it, and so is its own
//     look-up of the offset rows (a handful).
//   - Generic plans. A projection's statements are keyed by unnest arrays,
//     and left to choose PostgreSQL planned about half of their calls
//     afresh (a plan for each array length looked cheaper than the generic
//     one): at 150 webhooks/s, fail-first 1, 40 ms of planning over 2,000
//     webhooks for the projector's statements, 10 ms with this setting, at
//     no cost to their execution (pg_stat_statements, make profile). Their
//     plans do not depend on the values: look-ups by key, through an index
//     (the setting above). As kit.SendTx does for the hot writers.
const projectorSettings = `set_config('synchronous_commit', 'off', true), set_config('enable_seqscan', 'off', true),
	set_config('plan_cache_mode', 'force_generic_plan', true)`

// lockOffsets locks (creating when missing) every projection's offset row,
// in name order so two projectors never deadlock, and returns the offsets in
// projection order.
func (pr *Projector) lockOffsets(ctx context.Context, tx pgx.Tx) ([]eventstore.Position, error) {
	names := make([]string, len(pr.p.Projections))
	for i, p := range pr.p.Projections {
		names[i] = p.Group
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	rows, err := tx.Query(ctx, `SELECT consumer_group, coalesce(offset_acked, 0), last_processed_transaction_id::text::bigint,
			`+projectorSettings+`
		FROM consumer_offsets WHERE consumer_group = ANY($1) ORDER BY consumer_group FOR UPDATE`, sorted)
	if err != nil {
		return nil, fmt.Errorf("lock offsets: %w", err)
	}
	byName := map[string]eventstore.Position{}
	for rows.Next() {
		var name, commit, seqscan, plans string
		var pos, txid int64
		if err := rows.Scan(&name, &pos, &txid, &commit, &seqscan, &plans); err != nil {
			rows.Close()
			return nil, err
		}
		byName[name] = eventstore.Position{TransactionID: uint64(txid), GlobalPosition: pos}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock offsets: %w", err)
	}
	out := make([]eventstore.Position, len(names))
	for i, n := range names {
		out[i] = byName[n]
	}
	return out, nil
}

// ensureOffsets creates the offset rows a fresh database lacks.
func (pr *Projector) ensureOffsets(ctx context.Context) error {
	names := make([]string, len(pr.p.Projections))
	for i, p := range pr.p.Projections {
		names[i] = p.Group
	}
	_, err := pr.p.Pool.Exec(ctx, `INSERT INTO consumer_offsets (consumer_group, offset_acked, last_processed_transaction_id)
		SELECT g, 0, '0'::xid8 FROM unnest($1::text[]) AS g ON CONFLICT (consumer_group) DO NOTHING`, names)
	if err != nil {
		return fmt.Errorf("create offsets: %w", err)
	}
	return nil
}

// advance moves each projection's offset to where its fold reached.
func (pr *Projector) advance(ctx context.Context, tx pgx.Tx, offsets, last []eventstore.Position) error {
	var groups, txids []string
	var positions []int64
	for i, p := range pr.p.Projections {
		if less(offsets[i], last[i]) {
			groups, positions, txids = append(groups, p.Group), append(positions, last[i].GlobalPosition), append(txids, strconv.FormatUint(last[i].TransactionID, 10))
		}
	}
	if len(groups) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE consumer_offsets o SET offset_acked = u.pos, last_processed_transaction_id = u.txid::xid8
		FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(grp, pos, txid) WHERE o.consumer_group = u.grp`, groups, positions, txids)
	return err
}

func (pr *Projector) recordFailure(ctx context.Context, f failure) {
	if err := RecordError(context.WithoutCancel(ctx), pr.p.Pool, f.group, f.event.EventID.String(), f.err, pr.p.Now()); err != nil {
		pr.p.Log.Error("record projection error", "group", f.group, "err", err)
	}
}

// inSavepoint runs statements pipelined inside a savepoint of tx, rolled
// back alone when one fails.
func inSavepoint(ctx context.Context, tx pgx.Tx, stmts []eventstore.Statement) error {
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT hookstream_projection")
	for _, s := range stmts {
		b.Queue(s.SQL, s.Args...)
	}
	b.Queue("RELEASE SAVEPOINT hookstream_projection")
	err := tx.SendBatch(ctx, b).Close()
	if err == nil {
		return nil
	}
	if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT hookstream_projection"); rbErr != nil {
		return errors.Join(err, rbErr)
	}
	return err
}

// exec runs statements pipelined in one round trip.
func exec(ctx context.Context, tx pgx.Tx, stmts []eventstore.Statement) error {
	if len(stmts) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, s := range stmts {
		b.Queue(s.SQL, s.Args...)
	}
	return tx.SendBatch(ctx, b).Close()
}

// attempted reports whether the batch holds a recorded attempt.
func attempted(evs []eventstore.Event) bool {
	for _, e := range evs {
		if e.Type == domain.EvDeliveryAttempted {
			return true
		}
	}
	return false
}
