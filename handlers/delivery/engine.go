package delivery

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/circuit"
	"github.com/hookstream/hookstream/handlers/jobs"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/handlers/signing"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/secretbox"
	"github.com/hookstream/hookstream/projections"
)

// errAborted marks a request cut off by shutdown: it is not recorded.
const errAborted = "aborted by shutdown"

// ResponseBodyLimit is how much of a destination's response body an attempt records.
const ResponseBodyLimit = 10 * 1024

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
	// LeaseMargin is added to a destination's timeout for a job's lease (default 30s).
	LeaseMargin time.Duration
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

	projector *projections.Projector
	// batches holds the jobs of each published lane message by its id.
	batches sync.Map

	lanes    chan int
	mu       sync.Mutex
	inflight map[string]*destLoad
	wake     chan struct{}
}

// destLoad is what one destination holds right now: requests in flight and
// the lanes (batches) they occupy. Both are bounded, so a destination that
// hangs can neither pile up requests nor take every lane with one-job batches.
type destLoad struct{ requests, batches int }

// claimCooldown is the least time between two claims (River's fetch
// cooldown is 10 ms): it bounds claims, each a commit, at low load, and adds
// at most this much latency.
const claimCooldown = 3 * time.Millisecond

// batchSize is the most jobs one delivery batch (one lane) carries.
const batchSize = 16

// maxBatches is how many lanes one destination may occupy at once.
func (e *Engine) maxBatches() int { return max(1, (e.p.PerDestination+batchSize-1)/batchSize) }

// NewEngine fills defaults and returns an engine ready to Run.
func NewEngine(p EngineParams) *Engine {
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.Store == nil {
		p.Store = eventstore.New(p.Now)
	}
	if p.Lanes <= 0 {
		p.Lanes = 64
	}
	if p.PerDestination <= 0 {
		p.PerDestination = 32
	}
	if p.LeaseMargin <= 0 {
		p.LeaseMargin = 30 * time.Second
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
	e := &Engine{p: p, client: outbound.NewHTTPClient(p.Outbound), wlog: watermill.NewSlogLoggerWithLevelMapping(p.Log.With("component", "watermill"),
		map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}),
		lanes: make(chan int, p.Lanes), inflight: map[string]*destLoad{}, wake: make(chan struct{}, 1)}
	for i := 0; i < p.Lanes; i++ {
		e.lanes <- i
	}
	e.sends, e.cancelSends = context.WithCancel(context.Background())
	e.projector = projections.NewProjector(projections.ProjectorParams{Pool: p.Pool, Log: p.Log, Now: p.Now})
	return e
}

// Run runs the engine until ctx ends, then stops claiming, lets in-flight
// deliveries finish and record, and returns.
func (e *Engine) Run(ctx context.Context) error {
	logRouter, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, e.wlog)
	if err != nil {
		return err
	}
	// A handler's panic becomes an error: the message is handed out again,
	// and the router, the engine and the API stay up.
	logRouter.AddMiddleware(middleware.Recoverer)
	// The scheduler is a Watermill consumer group; the read models share one
	// projector that reads each batch of the log once (projections.Projector).
	for _, c := range []struct {
		group string
		types []string
		apply func(eventstore.Event) ([]eventstore.Statement, error)
	}{
		{jobs.GroupScheduler, jobs.LiveScheduleEvents, jobs.Schedule},
	} {
		sub, err := eventstore.NewSubscriber(e.p.Pool, eventstore.SubscriberParams{ConsumerGroup: c.group, PollInterval: e.p.ConsumerPoll,
			BatchSize: 500, EventTypes: c.types, FilterAfterRead: true, Pace: 50 * time.Millisecond}, e.wlog)
		if err != nil {
			return err
		}
		apply, group := c.apply, c.group
		logRouter.AddConsumerHandler(c.group, eventstore.Topic, sub, func(msg *message.Message) error {
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
		})
	}

	bus := gochannel.NewGoChannel(gochannel.Config{}, e.wlog)
	deliveryRouter, err := message.NewRouter(message.RouterConfig{CloseTimeout: 2*time.Minute + e.p.LeaseMargin}, e.wlog)
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
	e.p.Log.Info("engine running", "worker", e.p.WorkerID, "lanes", e.p.Lanes, "per_destination", e.p.PerDestination)

	// workCtx ends with ctx, or when a router stops on its own: then the
	// engine winds down and returns the error, so a supervisor restarts it.
	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	dispatchDone := make(chan struct{})
	go func() { defer close(dispatchDone); e.dispatch(workCtx, bus) }()
	var background sync.WaitGroup
	for _, run := range e.p.Background {
		background.Go(func() { run(workCtx) })
	}
	projectorDone := make(chan struct{})
	go func() { defer close(projectorDone); _ = e.projector.Run(workCtx) }()

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
	<-dispatchDone
	background.Wait()
	<-projectorDone
	grace := time.AfterFunc(e.p.ShutdownGrace, e.cancelSends)
	defer grace.Stop()
	defer e.cancelSends()
	// Stop claiming first, then let in-flight batches record their attempts.
	closeErr := errors.Join(routerErr, deliveryRouter.Close(), logRouter.Close(), bus.Close())
	e.releaseLeases()
	return closeErr
}

func laneTopic(i int) string { return "deliveries." + strconv.Itoa(i) }

// releaseLeases hands back jobs this worker claimed but never started.
func (e *Engine) releaseLeases() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.p.Pool.Exec(ctx, jobs.ReleaseWorkerSQL, e.p.WorkerID); err != nil {
		e.p.Log.Error("release leases", "err", err)
	}
}

// dispatchJob is a claimed job with everything the HTTP call needs.
type dispatchJob struct {
	DeliveryID    string             `json:"delivery_id"`
	OrgID         string             `json:"org_id"`
	EnvID         string             `json:"env_id"`
	EventID       string             `json:"event_id"`
	DestinationID string             `json:"destination_id"`
	AttemptID     string             `json:"attempt_id"`
	AttemptNumber int                `json:"attempt_number"`
	Version       int64              `json:"version"`
	BodyB64       string             `json:"body_b64"`
	ContentType   string             `json:"content_type"`
	DestFound     bool               `json:"dest_found"`
	URL           string             `json:"url"`
	Method        string             `json:"method"`
	Headers       map[string]string  `json:"headers"`
	TimeoutMS     int                `json:"timeout_ms"`
	Retry         domain.RetryPolicy `json:"retry"`
	DestStatus    string             `json:"dest_status"`
	DisabledWhy   string             `json:"disabled_reason"`
	Signing       *signing.Config    `json:"signing"`
	PrevSecret    string             `json:"prev_secret"`
	// SendURL is the URL requested, userinfo included; URL (what attempts
	// record) has it masked.
	SendURL string `json:"send_url"`
	// Unsendable, when set, is why no request may be made (a secret that
	// does not decrypt, a signing config without its secret): fail closed.
	Unsendable string `json:"unsendable,omitempty"`
}

func (e *Engine) dispatch(ctx context.Context, bus message.Publisher) {
	listenDone := make(chan struct{})
	go func() { defer close(listenDone); e.listen(ctx) }()
	defer func() { <-listenDone }()
	ticker := time.NewTicker(e.p.Poll)
	defer ticker.Stop()
	for {
		// Claims are at least claimCooldown apart: wake-ups arriving meanwhile
		// (a commit per webhook at low load) are served by one claim.
		if wait := claimCooldown - e.p.Now().Sub(e.lastClaim); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		e.lastClaim = e.p.Now()
		for {
			more, err := e.claimAndPublish(ctx, bus)
			if err != nil {
				if ctx.Err() == nil {
					e.p.Log.Error("dispatch", "err", err)
				}
				break
			}
			if !more {
				break // the claim took every due job it could: wait for a wake-up
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		case <-ticker.C:
		}
	}
}

// listen turns NOTIFY hookstream_jobs (sent when jobs become due now) into
// wake-ups; polling stays the fallback.
func (e *Engine) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := e.p.Pool.Acquire(ctx)
		if err != nil {
			select { // the database is away: the poll covers, try again in a second
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if _, err := conn.Exec(ctx, "LISTEN "+jobs.Channel); err == nil {
			for {
				if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
					break
				}
				e.notified()
			}
		}
		// A LISTENing connection is not returned to the pool; closing it can only fail on a dead connection.
		_ = conn.Hijack().Close(context.WithoutCancel(ctx))
	}
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// notified is a NOTIFY hookstream_jobs: new jobs (the dispatcher) and new
// events (the projector).
func (e *Engine) notified() {
	e.poke()
	e.projector.Wake()
}

// claimAndPublish claims due jobs within each destination's free capacity
// and hands each destination's jobs, in batches, to free lanes. It reports
// whether the claim was cut short by its limit (more may be due now).
func (e *Engine) claimAndPublish(ctx context.Context, bus message.Publisher) (bool, error) {
	// Until this claim is published, a batch that finishes wakes the
	// dispatcher again: it may free the room this claim did not see.
	e.capped.Store(true)
	free := len(e.lanes) * batchSize
	if free == 0 {
		return false, nil // every lane busy: the next finished batch wakes us
	}
	e.mu.Lock()
	var dests []string
	var rooms []int32
	for d, l := range e.inflight {
		room := min(e.p.PerDestination-l.requests, (e.maxBatches()-l.batches)*batchSize)
		dests, rooms = append(dests, d), append(rooms, int32(max(0, room)))
	}
	e.mu.Unlock()
	// Circuits are checked for cooldowns and probes at most every 50 ms,
	// not on every claim: a healthy engine pays one cheap query for it.
	var probes []string
	if now := e.p.Now(); now.Sub(e.lastProbeCheck) >= 50*time.Millisecond {
		e.lastProbeCheck = now
		var err error
		if probes, err = circuit.Probes(ctx, e.p.Pool, e.p.Store, e.p.Now().UTC()); err != nil {
			return false, err
		}
	}
	var batch []dispatchJob
	more := false
	for pass, only := range [][]string{probes, nil} {
		if pass == 0 && len(only) == 0 {
			continue // no probes: one claim, not two (a nil probe list claimed like the second pass)
		}
		limit := free - len(batch)
		claimed, err := e.claim(ctx, dests, rooms, limit, only)
		if err != nil {
			return false, err
		}
		more = only == nil && limit > 0 && len(claimed) == limit
		batch = append(batch, claimed...)
	}
	byDest := map[string][]dispatchJob{}
	var order []string
	// A destination with no room, or one whose room the claim filled, may have
	// due jobs left: then a finished batch wakes the dispatcher.
	full := false
	for _, r := range rooms {
		full = full || r <= 0
	}
	handed := false // jobs went back for want of a lane
	defer func() { e.capped.Store(more || full || handed || e.roomExhausted(byDest, dests, rooms)) }()
	for _, j := range batch {
		if _, ok := byDest[j.DestinationID]; !ok {
			order = append(order, j.DestinationID)
		}
		byDest[j.DestinationID] = append(byDest[j.DestinationID], j)
	}
	for _, dest := range order {
		back, err := e.publish(ctx, bus, dest, byDest[dest])
		handed = handed || back
		if err != nil {
			return false, err
		}
	}
	return more, nil
}

// roomExhausted reports whether a claim took all the room a destination
// had (so due jobs of it may have been left behind).
func (e *Engine) roomExhausted(byDest map[string][]dispatchJob, dests []string, rooms []int32) bool {
	defaultRoom := min(e.p.PerDestination, e.maxBatches()*batchSize)
	for d, got := range byDest {
		room := defaultRoom
		for i, known := range dests {
			if known == d {
				room = int(rooms[i])
			}
		}
		if len(got) >= room {
			return true
		}
	}
	return false
}

// publish hands one destination's claimed jobs to lanes, batchSize at a time.
// A claim never exceeds the destination's room; when the free lanes run out
// (other destinations took them), the rest is handed back (reported true).
func (e *Engine) publish(ctx context.Context, bus message.Publisher, dest string, group []dispatchJob) (bool, error) {
	chunks := (len(group) + batchSize - 1) / batchSize
	e.mu.Lock()
	load := e.inflight[dest]
	if load == nil {
		load = &destLoad{}
		e.inflight[dest] = load
	}
	load.requests += len(group)
	load.batches += chunks
	e.mu.Unlock()
	for len(group) > 0 {
		chunk := group[:min(batchSize, len(group))]
		group = group[len(chunk):]
		var lane int
		select {
		case lane = <-e.lanes:
		default:
			// No free lane (other destinations hold them): hand these jobs back
			// now rather than wait with their leases running.
			left := append(append([]dispatchJob(nil), chunk...), group...)
			e.finished(dest, len(left), chunks, -1)
			return true, e.handBack(ctx, left)
		}
		chunks--
		// The lanes are in process: the message carries the batch's id, and
		// the jobs (secrets included) never leave memory or get encoded.
		msg := message.NewMessage(kit.NewID(), nil)
		e.batches.Store(msg.UUID, chunk)
		msg.Metadata.Set("lane", strconv.Itoa(lane))
		msg.Metadata.Set("destination_id", dest)
		if err := bus.Publish(laneTopic(lane), msg); err != nil {
			e.batches.Delete(msg.UUID)
			e.finished(dest, len(chunk)+len(group), chunks+1, lane)
			return false, fmt.Errorf("publish batch: %w", err)
		}
	}
	return false, nil
}

// handBack releases the leases of claimed jobs that were not sent.
func (e *Engine) handBack(ctx context.Context, batch []dispatchJob) error {
	ids := make([]string, len(batch))
	for i, j := range batch {
		ids[i] = j.DeliveryID
	}
	if _, err := e.p.Pool.Exec(context.WithoutCancel(ctx), jobs.ReleaseSQL, ids, e.p.WorkerID); err != nil {
		return fmt.Errorf("hand back jobs: %w", err)
	}
	return nil
}

// claim leases due jobs: at most limit, each destination within its room
// (dests/rooms; others PerDestination), only the given ones when only is
// not nil.
func (e *Engine) claim(ctx context.Context, dests []string, rooms []int32, limit int, only []string) ([]dispatchJob, error) {
	if only != nil {
		limit = len(only)
	}
	if limit <= 0 {
		return nil, nil
	}
	defaultRoom := min(e.p.PerDestination, e.maxBatches()*batchSize)
	rows, err := e.p.Pool.Query(ctx, jobs.ClaimSQL, e.p.Now().UTC(), limit, dests, rooms, defaultRoom, only, e.p.WorkerID, e.p.LeaseMargin, e.lastDest)
	if err != nil {
		return nil, fmt.Errorf("claim jobs: %w", err)
	}
	var batch []dispatchJob
	for rows.Next() {
		var j dispatchJob
		var headers, intervals, signingRaw []byte
		var prevValid bool
		var sealed string
		if err := rows.Scan(&j.DeliveryID, &j.OrgID, &j.EnvID, &j.EventID, &j.DestinationID, &j.AttemptID, &j.AttemptNumber, &j.Version,
			&j.BodyB64, &j.ContentType, &j.DestFound, &j.URL, &j.Method, &headers, &j.TimeoutMS,
			&j.Retry.Enabled, &j.Retry.MaxRetries, &j.Retry.Backoff, &intervals, &j.DestStatus, &j.DisabledWhy, &signingRaw, &prevValid, &sealed); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan claimed job: %w", err)
		}
		e.openJobSecrets(&j, headers, signingRaw, sealed, prevValid)
		if err := json.Unmarshal(intervals, &j.Retry.Intervals); err != nil && j.Unsendable == "" {
			// One bad row fails its own job, not the claim (whose leases are taken).
			j.Unsendable = "destination retry_intervals are unreadable"
		}
		batch = append(batch, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim jobs: %w", err)
	}
	if len(batch) > 0 && only == nil {
		e.lastDest = lastServed(batch, e.lastDest)
	}
	return batch, nil
}

// lastServed is the destination a claim served last in its round-robin
// order (destinations after prev first, then from the start): the highest
// one at or below prev when the claim wrapped around, else the highest.
func lastServed(batch []dispatchJob, prev string) string {
	var after, wrapped string
	for _, j := range batch {
		if d := j.DestinationID; d > prev {
			after = max(after, d)
		} else {
			wrapped = max(wrapped, d)
		}
	}
	if wrapped != "" {
		return wrapped
	}
	return after
}

// openJobSecrets fills a claimed job's headers, signing config and request
// URL, decrypting the destination's secrets. Anything that does not decode
// or decrypt makes the job unsendable: it fails without a request, rather
// than going out unsigned or without its credentials.
func (e *Engine) openJobSecrets(j *dispatchJob, headers, signingRaw []byte, sealed string, prevValid bool) {
	j.SendURL = j.URL
	if !j.DestFound {
		return
	}
	if err := json.Unmarshal(headers, &j.Headers); err != nil {
		j.Unsendable = "destination headers are unreadable"
		return
	}
	if len(signingRaw) > 0 && string(signingRaw) != "null" {
		j.Signing = &signing.Config{}
		if err := json.Unmarshal(signingRaw, j.Signing); err != nil {
			j.Unsendable = "signing config is unreadable; the request was not sent unsigned"
			return
		}
	}
	sec, err := secrets.OpenDest(e.p.Secrets, j.DestinationID, sealed)
	if err != nil {
		e.p.Log.Error("destination secrets unreadable", "destination_id", j.DestinationID, "err", err)
		j.Unsendable = "destination secrets cannot be decrypted (encryption key missing or wrong); the request was not sent"
		return
	}
	if sec.URL != "" {
		j.SendURL = sec.URL
	}
	for k, v := range sec.Headers {
		j.Headers[k] = v
	}
	if j.Signing != nil {
		j.Signing.Secret = sec.SigningSecret
		if j.Signing.Secret == "" {
			j.Unsendable = "signing secret is missing; the request was not sent unsigned"
			return
		}
	}
	if prevValid {
		j.PrevSecret = sec.PreviousSecret
	}
}

// finished returns n requests and b batches of a destination, and a lane
// (when lane >= 0).
func (e *Engine) finished(dest string, n, b, lane int) {
	e.mu.Lock()
	if l := e.inflight[dest]; l != nil {
		l.requests -= n
		l.batches -= b
		if l.requests <= 0 && l.batches <= 0 {
			delete(e.inflight, dest)
		}
	}
	e.mu.Unlock()
	if lane >= 0 {
		e.lanes <- lane
	}
	if e.capped.Load() {
		e.poke() // due jobs were left behind for want of room: claim them now
	}
}

// handleBatch is the delivery handler: HTTP calls with no transaction open,
// then one short transaction records every outcome.
func (e *Engine) handleBatch(msg *message.Message) error {
	held, ok := e.batches.LoadAndDelete(msg.UUID)
	if !ok {
		return nil // handled before (a redelivered message): nothing left to do
	}
	batch := held.([]dispatchJob)
	lane, _ := strconv.Atoi(msg.Metadata.Get("lane"))
	defer e.finished(msg.Metadata.Get("destination_id"), len(batch), 1, lane)
	results := make([]domain.DeliveryAttempted, len(batch))
	var wg sync.WaitGroup
	// The batch is in due order. Each request starts once the one before it
	// has been written, so a backlog (after a pause or an open circuit)
	// leaves in order while the requests still overlap.
	prev := make(chan struct{})
	close(prev)
	for i := range batch {
		wg.Add(1)
		written := make(chan struct{})
		go func(prev <-chan struct{}) {
			defer wg.Done()
			var once sync.Once
			signal := func() { once.Do(func() { close(written) }) }
			defer signal()
			<-prev
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { signal() }}
			results[i] = e.sendRecovered(httptrace.WithClientTrace(e.sends, trace), batch[i])
		}(prev)
		prev = written
	}
	wg.Wait()
	if e.sends.Err() != nil {
		// Shut down past the grace period: requests cut off are not attempts.
		// Their leases are released at shutdown and they run again.
		kept := 0
		for i := range batch {
			if results[i].Error != nil && *results[i].Error == errAborted {
				continue
			}
			batch[kept], results[kept] = batch[i], results[i]
			kept++
		}
		batch, results = batch[:kept], results[:kept]
		if kept == 0 {
			return nil
		}
	}
	// Recording must outlive a shutdown signal: the requests were made.
	ctx := context.WithoutCancel(msg.Context())
	for try := 0; ; try++ {
		err := e.complete(ctx, batch, results)
		if err == nil {
			e.projector.Wake()
			if anyFailed(results) {
				e.poke() // a retry may be due at once
			}
			if e.p.ConfigChanged != nil && anyGone(results) {
				e.p.ConfigChanged()
			}
			for i, r := range results {
				e.p.Metrics.RecordAttempt(batch[i].DestinationID, r)
			}
			for i, r := range results {
				attrs := []slog.Attr{slog.String("delivery_id", batch[i].DeliveryID), slog.String("attempt_id", r.AttemptID),
					slog.String("destination_id", batch[i].DestinationID), slog.Int("attempt", batch[i].AttemptNumber),
					slog.String("status", r.Status), slog.Int("duration_ms", r.DurationMS)}
				if r.ResponseStatus != nil {
					attrs = append(attrs, slog.Int("http_status", *r.ResponseStatus))
				}
				if r.Error != nil {
					attrs = append(attrs, slog.String("error", *r.Error))
				}
				e.p.Log.LogAttrs(ctx, slog.LevelInfo, "attempt", attrs...)
			}
			return nil
		}
		if try == 4 {
			e.p.Log.Error("record attempts failed; leases will expire and the deliveries run again", "err", err, "deliveries", len(batch))
			return nil
		}
		time.Sleep(time.Duration(100*(try+1)) * time.Millisecond)
	}
}

// sendRecovered is send that turns a panic into a failed attempt (logged
// once), so one bad job cannot take down the lane, the engine or the API.
func (e *Engine) sendRecovered(ctx context.Context, j dispatchJob) (res domain.DeliveryAttempted) {
	defer func() {
		if v := recover(); v != nil {
			e.p.Log.Error("delivery attempt panicked", "delivery_id", j.DeliveryID, "attempt_id", j.AttemptID, "panic", fmt.Sprint(v))
			msg := "internal error while sending"
			res = domain.DeliveryAttempted{AttemptID: j.AttemptID, RequestURL: j.URL, RequestMethod: j.Method,
				StartedAt: e.p.Now().UTC(), Status: domain.AttemptFailed, Error: &msg, ErrorType: "network"}
		}
	}()
	return e.send(ctx, j)
}

// send makes one HTTP attempt and describes it.
func (e *Engine) send(ctx context.Context, j dispatchJob) domain.DeliveryAttempted {
	started := e.p.Now().UTC()
	res := domain.DeliveryAttempted{AttemptID: j.AttemptID, RequestURL: j.URL, RequestMethod: j.Method, StartedAt: started, Status: domain.AttemptFailed}
	fail := func(msg string) domain.DeliveryAttempted {
		res.Error = &msg
		res.DurationMS = int(e.p.Now().Sub(started).Milliseconds())
		return res
	}
	if !j.DestFound {
		return fail("destination was deleted")
	}
	if j.DestStatus == "disabled" {
		res.Final = "destination is disabled: " + kit.OrDefault(j.DisabledWhy, "by its owner")
		return fail(res.Final)
	}
	if j.Unsendable != "" {
		return fail(j.Unsendable)
	}
	body, err := base64.StdEncoding.DecodeString(j.BodyB64)
	if err != nil {
		return fail("stored payload is unreadable")
	}
	res.RequestBodySize = len(body)
	reqCtx, cancel := context.WithTimeout(ctx, time.Duration(j.TimeoutMS)*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, j.Method, j.SendURL, strings.NewReader(string(body)))
	if err != nil {
		return fail("invalid request URL")
	}
	for k, v := range j.Headers {
		req.Header.Set(k, v)
	}
	if j.ContentType != "" {
		req.Header.Set("Content-Type", j.ContentType)
	}
	req.Header.Set("User-Agent", "hookstream/1.0")
	req.Header.Set("X-hookstream-Event-Id", j.EventID)
	req.Header.Set("X-hookstream-Delivery-Id", j.DeliveryID)
	req.Header.Set("X-hookstream-Delivery-Attempt", strconv.Itoa(j.AttemptNumber))
	req.Header.Set("X-hookstream-Timestamp", started.Format(time.RFC3339))
	req.Header.Set("Idempotency-Key", j.DeliveryID)
	j.Signing.Sign(req.Header, j.DeliveryID, body, j.PrevSecret, started)
	sent, err := json.Marshal(flatten(redactSent(req.Header, j.Headers, j.Signing)))
	if err != nil {
		return fail("request headers cannot be recorded")
	}
	res.RequestHeaders = string(sent)

	resp, err := e.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fail(errAborted)
		}
		msg, class := classifyError(err, reqCtx.Err() == context.DeadlineExceeded, j.TimeoutMS)
		res.ErrorType = class
		return fail(msg)
	}
	defer resp.Body.Close()
	limited, _ := io.ReadAll(io.LimitReader(resp.Body, ResponseBodyLimit))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // drain so the connection is reused
	res.DurationMS = int(e.p.Now().Sub(started).Milliseconds())
	status := resp.StatusCode
	res.ResponseStatus = &status
	rhs, rb := recordHeaders(resp.Header, ResponseHeadersLimit), string(limited)
	res.ResponseHeaders, res.ResponseBody = &rhs, &rb
	if status >= 200 && status < 300 {
		res.Status = domain.AttemptSuccess
		return res
	}
	msg := fmt.Sprintf("HTTP %d", status)
	res.Error = &msg
	res.ErrorType = domain.ErrorClass(res)
	res.RetryAfterMS = retryAfter(status, resp.Header, e.p.Now())
	if status == http.StatusGone {
		res.Final = "destination answered 410 Gone; the destination was disabled"
	}
	return res
}

// ResponseHeadersLimit is how much of a destination's response headers an
// attempt records (the JSON-encoded object); the rest is cut, like the body.
const ResponseHeadersLimit = 64 * 1024

// headersTruncated is the entry that says how many headers were left out.
const headersTruncated = "X-Hookstream-Headers-Truncated"

// recordHeaders is h as an attempt records it: a JSON object of at most
// limit bytes, headers in name order, a value cut where the limit falls, and
// an entry naming how many headers were left out.
func recordHeaders(h http.Header, limit int) string {
	flat := flatten(h)
	names := make([]string, 0, len(flat))
	for k := range flat {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make(map[string]string, len(flat))
	budget := limit - 64 // room for the truncation entry and the braces
	omitted, cut := 0, false
	for _, k := range names {
		v := flat[k]
		cost := len(k) + len(v) + 8 // quotes, colon, comma
		if budget <= 0 || len(k) > budget {
			omitted++
			continue
		}
		if cost > budget {
			v = strings.ToValidUTF8(v[:max(0, budget-len(k)-8)], "")
			cost, cut = len(k)+len(v)+8, true
		}
		out[k] = v
		budget -= cost
	}
	if omitted > 0 || cut {
		out[headersTruncated] = strconv.Itoa(omitted)
	}
	raw, err := json.Marshal(out)
	if err != nil || len(raw) > limit {
		// JSON escaping (control characters, <, >) can grow the text; keep the
		// record within its bound rather than exact.
		return fmt.Sprintf(`{%q:%q}`, headersTruncated, strconv.Itoa(len(flat)))
	}
	return string(raw)
}

// anyFailed reports whether an attempt of the batch failed.
func anyFailed(results []domain.DeliveryAttempted) bool {
	for _, r := range results {
		if r.Status != domain.AttemptSuccess {
			return true
		}
	}
	return false
}

// anyGone reports whether a destination answered 410 Gone (and so was disabled).
func anyGone(results []domain.DeliveryAttempted) bool {
	for _, r := range results {
		if r.ResponseStatus != nil && *r.ResponseStatus == http.StatusGone {
			return true
		}
	}
	return false
}

func flatten(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = strings.Join(v, ", ")
	}
	return out
}

// complete records a batch's outcomes in one transaction: load the streams,
// decide, append every stream at its expected version, move the jobs. When a
// stream moved meanwhile, each delivery is recorded on its own.
func (e *Engine) complete(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted) error {
	err := e.completeTx(ctx, batch, results)
	if !errors.Is(err, eventstore.ErrConcurrency) || len(batch) == 1 {
		return err
	}
	for i := range batch {
		for try := 0; ; try++ {
			err := e.completeTx(ctx, batch[i:i+1], results[i:i+1])
			if err == nil || !errors.Is(err, eventstore.ErrConcurrency) || try == 3 {
				if err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}

// completeTx records a batch's outcomes. The common batch — no dead letter,
// no 410, a circuit the batch cannot move — takes two round trips: the
// delivery streams and the circuit are read, the outcome is decided from
// them, and BEGIN, the append, the job rows and COMMIT go in one pipeline
// (a stream that moved meanwhile fails the append and nothing commits). Any
// other batch takes completeLocked, which locks what it changes.
func (e *Engine) completeTx(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted) error {
	if !batch[0].DestFound || anyGone(results) {
		return e.completeLocked(ctx, batch, results)
	}
	ids := make([]string, len(batch))
	for i, j := range batch {
		ids[i] = j.DeliveryID
	}
	// One round trip reads the streams and the circuit.
	reads := &pgx.Batch{}
	readStreams := e.p.Store.QueueLoadMany(reads, ids)
	reads.Queue(`SELECT d.circuit_breaker_enabled, k.state = 'closed' AND k.failure_count = 0 AND k.probe_delivery_id IS NULL
		FROM destinations d JOIN destination_circuits k ON k.destination_id = d.id WHERE d.id = $1`, batch[0].DestinationID)
	br := e.p.Pool.SendBatch(ctx, reads)
	streams, err := readStreams(br)
	var enabled, clean bool
	if err == nil {
		err = br.QueryRow().Scan(&enabled, &clean)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return e.completeLocked(ctx, batch, results) // no circuit row: made there
	}
	if err != nil {
		return fmt.Errorf("read streams and circuit: %w", err)
	}
	if enabled && (!clean || anyRequestFailed(batch, results)) {
		return e.completeLocked(ctx, batch, results)
	}
	now := e.p.Now().UTC()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	var appends []eventstore.StreamAppend
	var rows jobs.Rows
	var stale []string
	for i, j := range batch {
		d, decided, err := recordAttempt(streams[j.DeliveryID], j, results[i], now)
		if errors.Is(err, domain.ErrAttemptNotPlanned) {
			stale = append(stale, j.DeliveryID)
			continue
		}
		if err != nil {
			return err
		}
		md := eventstore.Metadata{Actor: "engine", CorrelationID: j.EventID}
		expected := d.Version()
		evs := make([]eventstore.NewEvent, len(decided))
		for k, dec := range decided {
			if dec.Type == domain.EvMovedToDLQ {
				return e.completeLocked(ctx, batch, results) // a dead letter opens an issue
			}
			raw, err := json.Marshal(dec.Payload)
			if err != nil {
				return err
			}
			// The events' versions are known: the fold follows them without a read back.
			if err := d.Apply(expected+int64(k)+1, dec.Type, raw); err != nil {
				return err
			}
			evs[k] = eventstore.NewEvent{Type: dec.Type, Payload: json.RawMessage(raw), Metadata: md}
		}
		appends = append(appends, eventstore.StreamAppend{StreamType: domain.StreamDelivery, StreamID: j.DeliveryID,
			OrgID: j.OrgID, EnvID: j.EnvID, Expected: expected, Events: evs})
		rows.Add(j.DeliveryID, d, now)
	}
	var read func(pgx.BatchResults) ([]eventstore.Event, error)
	if len(appends) > 0 {
		if read, err = e.p.Store.QueueAppend(b, appends...); err != nil {
			return err
		}
		b.Queue(jobs.UpdateSQL, rows.Args()...)
	}
	if len(stale) > 0 {
		b.Queue(jobs.ReleaseSQL, stale, e.p.WorkerID)
	}
	return kit.SendTx(ctx, e.p.Pool, b, func(br pgx.BatchResults) error {
		if read != nil {
			if _, err := read(br); err != nil {
				return err
			}
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("update jobs: %w", err)
			}
		}
		if len(stale) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("release stale jobs: %w", err)
			}
		}
		return nil
	})
}

// recordAttempt folds a delivery's stream and decides what its attempt's
// result appends (domain.ErrAttemptNotPlanned: the attempt was recorded before).
func recordAttempt(stream []eventstore.Event, j dispatchJob, r domain.DeliveryAttempted, now time.Time) (*domain.Delivery, []domain.Decided, error) {
	d, err := kit.FoldDelivery(stream)
	if err != nil {
		return nil, nil, err
	}
	decided, err := d.RecordAttempt(r, j.Retry, now, kit.NewID)
	return d, decided, err
}

// completeLocked records a batch in one transaction that locks the circuit
// when it changes, opens issues for dead letters and disables a destination
// that answered 410.
func (e *Engine) completeLocked(ctx context.Context, batch []dispatchJob, results []domain.DeliveryAttempted) error {
	return pgx.BeginFunc(ctx, e.p.Pool, func(tx pgx.Tx) error {
		ids := make([]string, len(batch))
		for i, j := range batch {
			ids[i] = j.DeliveryID
		}
		streams, err := e.p.Store.LoadMany(ctx, tx, ids)
		if err != nil {
			return err
		}
		now := e.p.Now().UTC()
		var appends []eventstore.StreamAppend
		aggs := map[string]*domain.Delivery{}
		var stale []string
		var recordedJobs []dispatchJob
		var recordedResults []domain.DeliveryAttempted
		dlq := map[string]bool{}
		for i, j := range batch {
			d, decided, err := recordAttempt(streams[j.DeliveryID], j, results[i], now)
			if errors.Is(err, domain.ErrAttemptNotPlanned) {
				stale = append(stale, j.DeliveryID)
				continue
			}
			if err != nil {
				return err
			}
			recordedJobs, recordedResults = append(recordedJobs, j), append(recordedResults, results[i])
			for _, dec := range decided {
				if dec.Type == domain.EvMovedToDLQ {
					dlq[j.DeliveryID] = true
				}
			}
			aggs[j.DeliveryID] = d
			appends = append(appends, eventstore.StreamAppend{
				StreamType: domain.StreamDelivery, StreamID: j.DeliveryID, OrgID: j.OrgID, EnvID: j.EnvID, Expected: d.Version(),
				Events: kit.NewEvents(decided, eventstore.Metadata{Actor: "engine", CorrelationID: j.EventID}),
			})
		}
		if len(appends) > 0 {
			stored, err := e.p.Store.AppendMany(ctx, tx, appends...)
			if err != nil {
				return err
			}
			for _, ev := range stored {
				if err := aggs[ev.StreamID].Apply(ev.StreamVersion, ev.Type, ev.Payload); err != nil {
					return err
				}
			}
		}
		var rows jobs.Rows
		for id, d := range aggs {
			rows.Add(id, d, now)
		}
		if rows.Len() > 0 {
			if _, err := tx.Exec(ctx, jobs.UpdateSQL, rows.Args()...); err != nil {
				return fmt.Errorf("update jobs: %w", err)
			}
		}
		if len(stale) > 0 {
			if _, err := tx.Exec(ctx, jobs.ReleaseSQL, stale, e.p.WorkerID); err != nil {
				return fmt.Errorf("release stale jobs: %w", err)
			}
		}
		return e.recordOutcomes(ctx, tx, recordedJobs, recordedResults, dlq, now)
	})
}
