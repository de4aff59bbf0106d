package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/secretbox"
	"github.com/hookstream/hookstream/internal/upkeep"
	"github.com/hookstream/hookstream/internal/wake"
	"github.com/hookstream/hookstream/projections"
)

// EngineParams configure the delivery workers.
type EngineParams struct {
	Pool     *pgxpool.Pool
	Store    *eventstore.Store
	Log      *slog.Logger
	Now      func() time.Time
	Outbound outbound.Policy
	// Lanes is how many delivery batches run at once (default 64).
	Lanes int
	// PerDestination bounds in-flight requests to one destination (default 32),
	// so a hanging destination cannot take every lane.
	PerDestination int
	// PerTenantLanes bounds the lanes one tenant (organization and
	// environment) holds at once (default three quarters of Lanes), so a
	// tenant with many hanging destinations leaves the rest to the others.
	PerTenantLanes int
	// LeaseTTL is how long a claimed job's lease runs past the worker's
	// last heartbeat (default 10s). The worker extends the leases of the
	// jobs it holds every LeaseTTL/3 while their requests run, however
	// long; after a crash its jobs are claimable again within LeaseTTL.
	LeaseTTL time.Duration
	// Poll is the dispatcher's fallback poll when no notification wakes it
	// (default 1s): new jobs NOTIFY, finished batches wake it in process.
	Poll time.Duration
	// ConsumerPoll is the scheduler consumer group's poll interval after an
	// empty read (default 1s): writers write job rows themselves, so the
	// scheduler only confirms them from the log and need not be prompt.
	ConsumerPoll time.Duration
	// ReplayPoll is how often running replays are checked for a due batch
	// (default 250ms); handlers.NewEngine passes it to the replay releaser.
	ReplayPoll time.Duration
	// Metrics, when set, count attempts.
	Metrics *metrics.Metrics
	// Background are run beside the dispatcher until Run's context ends,
	// and waited for (the replay releaser, the issue resolver).
	Background []func(context.Context)
	// ConfigChanged, when set, is called after the engine changed a
	// destination's configuration (a 410 disabled it), so the API's cached
	// ingest routes follow at once (Service.ForgetRoutes).
	ConfigChanged func()
	// Secrets decrypts destinations' credentials; a destination whose
	// secrets cannot be decrypted gets failed attempts, never a request.
	Secrets *secretbox.Keyring
	// ShutdownGrace is how long in-flight requests may finish once Run's
	// context ends (default 10s). Requests cut off after it are not recorded:
	// their jobs go back to the queue and run again, with the same attempt id.
	ShutdownGrace time.Duration
	WorkerID      string
	// Wake carries wake-ups between the writers and listeners of this
	// process (share one with the Service: ingest then wakes the dispatcher
	// without a round trip) and NOTIFYs to other processes. Default: a
	// notifier of the engine's own.
	Wake *wake.Notifier
}

// Engine runs the pipeline: the "log" router (scheduler and projectors on the
// events table), the dispatcher, and the "delivery" router.
type Engine struct {
	p      EngineParams
	client *http.Client
	wlog   watermill.LoggerAdapter

	// sends is the context of outbound requests: it outlives Run's context
	// by ShutdownGrace, so a shutdown lets in-flight requests finish.
	sends       context.Context
	cancelSends context.CancelFunc

	lastProbeCheck time.Time // dispatcher goroutine only
	lastClaim      time.Time // dispatcher goroutine only
	lastDest       string    // the destination the last claim served last (round robin)
	// capped is set when the last claim was cut short by capacity (a
	// destination's room or the free lanes): a finished batch then wakes
	// the dispatcher. Otherwise only new due jobs (NOTIFY) and retries do.
	capped atomic.Bool
	// backlog is what the last claim that ran to its end said of capped:
	// due jobs were left behind for want of room. Ingest then hands over
	// nothing, and new jobs queue behind the backlog (capped itself is
	// also set while a claim runs).
	backlog atomic.Bool
	// draining is set once the engine stops claiming: batches then record
	// their attempts but chain no retry (one taken before hands its lease
	// back unless it still holds its room).
	draining atomic.Bool
	// bus is the lanes' publisher while the delivery router runs (nil
	// otherwise): the ingest hand-off publishes to it.
	bus atomic.Pointer[message.Publisher]

	projector *projections.Projector
	// batches holds the jobs of each published lane message by its id.
	batches sync.Map
	// held counts, per delivery id, the claims of this worker not yet
	// recorded or handed back (a delivery recorded and claimed again at once
	// is held twice for a moment): the heartbeat extends their leases.
	heldMu sync.Mutex
	held   map[string]int

	lanes    chan int
	mu       sync.Mutex
	inflight map[string]*destLoad
	// tenantLanes counts the lanes each tenant ("org/env") holds.
	tenantLanes map[string]int
	// roomFreed, when a batch waits to retake room (retake), is closed by
	// the next finished; retakeWait bounds that wait.
	retakeWait time.Duration
	roomFreed  chan struct{}
	wake       chan struct{}

	// the records waiting to be written together (recordGrouped)
	groupMu   sync.Mutex
	group     []*pendingRecord
	groupJobs int
	groupFull chan struct{}
}

// destLoad is what one destination holds right now: requests in flight and
// the lanes (batches) they occupy. Both are bounded, so a destination that
// hangs can neither pile up requests nor take every lane with one-job batches.
type destLoad struct {
	requests, batches int
	tenant            string
}

// claimCooldown is the least time between two claims (River's fetch
// cooldown is 10 ms): it bounds claims, each a commit, at low load, and adds
// at most this much latency.
const claimCooldown = 3 * time.Millisecond

// batchSize is the most jobs one delivery batch (one lane) carries.
const batchSize = 16

// maxBatches is how many lanes one destination may occupy at once.
func (e *Engine) maxBatches() int { return max(1, (e.p.PerDestination+batchSize-1)/batchSize) }

// room is how many more requests a destination holding l (nil: nothing)
// may take: within its requests and its lanes. Under e.mu.
func (e *Engine) room(l *destLoad) int {
	if l == nil {
		return min(e.p.PerDestination, e.maxBatches()*batchSize)
	}
	return max(0, min(e.p.PerDestination-l.requests, (e.maxBatches()-l.batches)*batchSize))
}

// loadFor is dest's load, added for tenant when it holds nothing yet. Under e.mu.
func (e *Engine) loadFor(dest, tenant string) *destLoad {
	l := e.inflight[dest]
	if l == nil {
		l = &destLoad{tenant: tenant}
		e.inflight[dest] = l
	}
	return l
}

// NewEngine fills defaults and returns an engine ready to Run.
func NewEngine(p EngineParams) *Engine {
	kit.Defaults(&p.Now, &p.Log, &p.Store)
	if p.Lanes <= 0 {
		p.Lanes = 64
	}
	if p.PerDestination <= 0 {
		p.PerDestination = 32
	}
	if p.PerTenantLanes <= 0 {
		p.PerTenantLanes = max(1, p.Lanes*3/4)
	}
	if p.LeaseTTL <= 0 {
		p.LeaseTTL = 10 * time.Second
	}
	if p.Poll <= 0 {
		p.Poll = time.Second
	}
	if p.ConsumerPoll <= 0 {
		p.ConsumerPoll = time.Second
	}
	if p.ShutdownGrace <= 0 {
		p.ShutdownGrace = 10 * time.Second
	}
	if p.WorkerID == "" {
		p.WorkerID = kit.NewID()
	}
	if p.Wake == nil {
		p.Wake = wake.New(p.Pool)
	}
	e := &Engine{p: p, client: outbound.NewHTTPClient(p.Outbound), wlog: newWatermillLogger(p.Log),
		lanes: make(chan int, p.Lanes), retakeWait: retakeWait, inflight: map[string]*destLoad{}, wake: make(chan struct{}, 1), held: map[string]int{},
		tenantLanes: map[string]int{}, groupFull: make(chan struct{}, 1)}
	for i := 0; i < p.Lanes; i++ {
		e.lanes <- i
	}
	e.sends, e.cancelSends = context.WithCancel(context.Background())
	e.projector = projections.NewProjector(projections.ProjectorParams{Pool: p.Pool, Log: p.Log, Now: p.Now, Wake: p.Wake})
	p.Wake.OnLocal(jobs.Channel, e.notified)
	return e
}

// Run runs the engine until ctx ends, then stops claiming, lets in-flight
// deliveries finish and record, and returns.
func (e *Engine) Run(ctx context.Context) error {
	logRouter, err := e.newLogRouter()
	if err != nil {
		return err
	}
	bus := gochannel.NewGoChannel(gochannel.Config{}, e.wlog)
	deliveryRouter, err := message.NewRouter(message.RouterConfig{CloseTimeout: 2*time.Minute + e.p.LeaseTTL}, e.wlog)
	if err != nil {
		return err
	}
	deliveryRouter.AddMiddleware(middleware.Recoverer)
	for i := 0; i < e.p.Lanes; i++ {
		deliveryRouter.AddConsumerHandler("delivery."+strconv.Itoa(i), laneTopic(i), bus, e.handleBatch)
	}

	runCtx, stopRouters := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRouters()
	errc := make(chan error, 3)
	go func() { errc <- logRouter.Run(runCtx) }()
	go func() { errc <- deliveryRouter.Run(runCtx) }()
	<-logRouter.Running()
	<-deliveryRouter.Running()
	var lanes message.Publisher = bus
	e.bus.Store(&lanes)
	e.p.Log.Info("engine running", "worker", e.p.WorkerID, "lanes", e.p.Lanes, "per_destination", e.p.PerDestination)

	beating, stopBeating := context.WithCancel(context.WithoutCancel(ctx))
	beatDone := make(chan struct{})
	go func() { defer close(beatDone); e.heartbeat(beating) }()
	stopDraining := context.AfterFunc(ctx, func() { e.draining.Store(true) })
	defer stopDraining()
	routerErr := e.work(ctx, bus, errc)
	e.draining.Store(true) // a router stopped on its own
	e.bus.Store(nil)
	grace := time.AfterFunc(e.p.ShutdownGrace, e.cancelSends)
	defer grace.Stop()
	defer e.cancelSends()
	// Stop claiming first, then let in-flight batches record their attempts.
	closeErr := errors.Join(routerErr, deliveryRouter.Close(), logRouter.Close(), bus.Close())
	stopBeating() // every batch has recorded or been cut off
	<-beatDone
	e.releaseLeases()
	return closeErr
}

// work runs the dispatcher, the projector and the Background functions
// until ctx ends, or until a router stops on its own (errc): then the engine
// winds down and returns that error, so a supervisor restarts it.
func (e *Engine) work(ctx context.Context, bus message.Publisher, errc <-chan error) error {
	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var running sync.WaitGroup
	running.Go(func() { e.dispatch(workCtx, bus) })
	running.Go(func() { _ = e.projector.Run(workCtx) })
	running.Go(func() { e.upkeep().Run(workCtx) })
	for _, run := range e.p.Background {
		running.Go(func() { run(workCtx) })
	}
	var routerErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		routerErr = fmt.Errorf("a router stopped unexpectedly: %w", err)
		if err == nil {
			routerErr = errors.New("a router stopped unexpectedly")
		}
		e.p.Log.Error("router stopped; shutting the engine down", "err", err)
		stopWork()
	}
	running.Wait()
	return routerErr
}

// upkeep keeps delivery_jobs vacuumed (past 5,000 dead rows) and analyzed:
// the claim and the job update are planned on its statistics. The other
// tables are left to autovacuum: their hot statements find rows by key
// whatever the statistics say (the projector's transaction runs with
// sequential scans off, projections.projectorSettings: on young tables the
// planner chose them), and analyzing them cost more than it saved (1.4 s of
// a saturated 10,000-webhook run analyzing the read models).
func (e *Engine) upkeep() upkeep.Upkeep {
	return upkeep.Upkeep{Pool: e.p.Pool, Log: e.p.Log, Vacuum: map[string]int64{"delivery_jobs": 5000}, Analyze: []string{"delivery_jobs"},
		Prune: []string{jobs.PruneDoneSQL, PruneReplaysSQL}}
}

// newLogRouter is the router of the consumer groups on the events table:
// the scheduler. The read models share one projector that reads each batch
// of the log once (projections.Projector), run beside it.
func (e *Engine) newLogRouter() (*message.Router, error) {
	logRouter, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, e.wlog)
	if err != nil {
		return nil, err
	}
	// A handler's panic becomes an error: the message is handed out again,
	// and the router, the engine and the API stay up.
	logRouter.AddMiddleware(middleware.Recoverer)
	sub, err := eventstore.NewSubscriber(e.p.Pool, eventstore.SubscriberParams{ConsumerGroup: jobs.GroupScheduler, PollInterval: e.p.ConsumerPoll,
		BatchSize: 500, EventTypes: jobs.LiveScheduleEvents, IndexedTypes: true, Pace: 50 * time.Millisecond}, e.wlog)
	if err != nil {
		return nil, err
	}
	logRouter.AddConsumerHandler(jobs.GroupScheduler, eventstore.Topic, sub, e.consume(jobs.GroupScheduler, jobs.Schedule))
	return logRouter, nil
}

// consume is a consumer group's handler: the statements apply gives for an
// event run in the batch's transaction; a failure is recorded for
// `projections status` and the event is handed out again.
func (e *Engine) consume(group string, apply func(eventstore.Event) ([]eventstore.Statement, error)) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ev, err := eventstore.EventFromMessage(msg)
		if err == nil {
			var stmts []eventstore.Statement
			if stmts, err = apply(ev); err == nil {
				// Events this consumer ignores cost no SQL at all.
				err = eventstore.ExecInSavepoint(msg.Context(), stmts)
			}
		}
		if err != nil && msg.Context().Err() == nil {
			// Outside the batch's transaction, which rolls back: projections status shows it.
			if rerr := projections.RecordError(context.WithoutCancel(msg.Context()), e.p.Pool, group, ev.EventID.String(), err, e.p.Now()); rerr != nil {
				e.p.Log.Error("record consumer error", "group", group, "err", rerr)
			}
			e.p.Log.Error("consumer handler failed; the event is redelivered", "group", group, "event", ev.EventID, "err", err)
		}
		return err
	}
}

func laneTopic(i int) string { return "deliveries." + strconv.Itoa(i) }

// heartbeat extends the leases of the jobs this worker holds, every
// LeaseTTL/3, until ctx ends: Run ends it only once the delivery router has
// closed, so requests still finishing in the shutdown grace keep theirs.
func (e *Engine) heartbeat(ctx context.Context) {
	t := time.NewTicker(e.p.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.heldMu.Lock()
		ids := make([]string, 0, len(e.held))
		for id := range e.held {
			ids = append(ids, id)
		}
		e.heldMu.Unlock()
		if len(ids) == 0 {
			continue
		}
		if _, err := e.p.Pool.Exec(ctx, jobs.HeartbeatSQL, ids, e.p.WorkerID, e.p.Now().UTC().Add(e.p.LeaseTTL)); err != nil && ctx.Err() == nil {
			e.p.Log.Warn("lease heartbeat failed; leases expire unless the next one succeeds", "err", err, "jobs", len(ids))
		}
	}
}

// hold adds a claimed job to those the heartbeat extends.
func (e *Engine) hold(deliveryID string) {
	e.heldMu.Lock()
	e.held[deliveryID]++
	e.heldMu.Unlock()
}

// release forgets jobs the heartbeat should no longer extend.
func (e *Engine) release(batch []dispatchJob) {
	e.heldMu.Lock()
	defer e.heldMu.Unlock()
	for _, j := range batch {
		if e.held[j.DeliveryID]--; e.held[j.DeliveryID] <= 0 {
			delete(e.held, j.DeliveryID)
		}
	}
}

// releaseLeases hands back jobs this worker claimed but never started.
func (e *Engine) releaseLeases() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.p.Pool.Exec(ctx, jobs.ReleaseWorkerSQL, e.p.WorkerID); err != nil {
		e.p.Log.Error("release leases", "err", err)
	}
}

// PruneReplaysSQL deletes replay jobs a day after they were requested, once
// they released everything or stopped (hookstream keeps a replay's job
// state 24 h); their history stays in the log, and a rebuild of the
// replays read model brings them back until the next round.
const PruneReplaysSQL = `DELETE FROM replay_jobs WHERE created_at < now() - interval '24 hours' AND (status <> 'running' OR released >= total)`
