// Package handlers is hookstream's composition root: it wires the packages
// below it into the REST API (api), the application service the API calls
// (resources, ingest, redeliver, issues, circuit, metrics and the
// projections' reads) and the delivery engine (delivery, with the replay
// releaser and the issue resolver beside it).
//
// Dependencies point one way: api → the use cases (ingest, redeliver,
// resources, issues, circuit, metrics) → the leaves (jobs, secrets, signing,
// outbound, tenancy) → projections, eventstore and domain.
package handlers

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/api"
	"github.com/hookstream/hookstream/handlers/circuit"
	"github.com/hookstream/hookstream/handlers/delivery"
	"github.com/hookstream/hookstream/handlers/ingest"
	"github.com/hookstream/hookstream/handlers/issues"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/handlers/outbound"
	"github.com/hookstream/hookstream/handlers/redeliver"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/internal/kit"
	"github.com/hookstream/hookstream/internal/secretbox"
	"github.com/hookstream/hookstream/internal/wake"
	"github.com/hookstream/hookstream/projections"
)

// ServiceParams configure the application service behind the API.
type ServiceParams struct {
	Pool      *pgxpool.Pool
	Store     *eventstore.Store
	Log       *slog.Logger
	Now       func() time.Time
	PublicURL string // base of ingest URLs, e.g. http://127.0.0.1:8080
	// MaxIngestBody bounds ingested bodies (413 above it); default 1 MiB.
	MaxIngestBody int64
	// Secrets encrypts signing and verification secrets, credential headers
	// and URL userinfo at rest; without a key, storing one is refused.
	Secrets *secretbox.Keyring
	// IngestCacheTTL is how long ingest reuses a looked-up source and its
	// routes (default 1s; negative: never). Configuration writes through
	// this service clear it at once; another process's within the TTL.
	IngestCacheTTL time.Duration
	// Outbound refuses destination URLs whose host is a disallowed address
	// literal (the zero policy refuses every non-public range).
	Outbound outbound.Policy
	// Wake, shared with the engine in one process, carries wake-ups to it
	// without a round trip (default: a notifier of the service's own).
	Wake *wake.Notifier
}

// Service is the application layer: every API call is one method of one of
// its roles, promoted from api.Services.
type Service = api.Services

// NewService fills defaults and wires the roles.
func NewService(p ServiceParams) *Service {
	kit.Defaults(&p.Now, &p.Log, &p.Store)
	if p.Wake == nil {
		p.Wake = wake.New(p.Pool)
	}
	s := &Service{}
	reg := resources.New(resources.Params{Pool: p.Pool, Store: p.Store, Log: p.Log, Now: p.Now, PublicURL: p.PublicURL,
		Secrets: p.Secrets, Outbound: p.Outbound, Changed: func() { s.ForgetRoutes() }})
	reads := projections.NewReads(p.Pool)
	tracker := issues.New(p.Pool, p.Store, p.Now)
	*s = api.Services{
		Registry: reg,
		Ingester: ingest.New(ingest.Params{Pool: p.Pool, Store: p.Store, Now: p.Now, MaxIngestBody: p.MaxIngestBody,
			CacheTTL: p.IngestCacheTTL, Sources: reg, Wake: p.Wake}),
		Reads: reads,
		Redeliverer: redeliver.New(redeliver.Params{Pool: p.Pool, Store: p.Store, Log: p.Log, Now: p.Now,
			Reads: reads, Registry: reg, Issues: tracker, Wake: p.Wake}),
		Tracker:  tracker,
		Breakers: circuit.New(p.Pool, p.Store, p.Now, reg),
		Reports:  metrics.NewReports(p.Pool, p.Now),
	}
	return s
}

// APIParams configure the REST API.
type APIParams = api.Params

// NewAPI builds the REST API over p.Service.
func NewAPI(p APIParams) *api.API { return api.New(p) }

// EngineParams configure the delivery engine.
type EngineParams = delivery.EngineParams

// NewEngine builds the delivery engine with the replay releaser and the
// issue resolver running beside its dispatcher.
func NewEngine(p EngineParams) *delivery.Engine {
	kit.Defaults(&p.Now, &p.Log, &p.Store)
	replays := redeliver.New(redeliver.Params{Pool: p.Pool, Store: p.Store, Log: p.Log, Now: p.Now, ReplayPoll: p.ReplayPoll})
	now, log := p.Now, p.Log
	p.Background = append(p.Background, replays.RunReplays, func(ctx context.Context) {
		issues.RunResolver(ctx, p.Pool, p.Store, now, log)
	})
	return delivery.NewEngine(p)
}

// NewWake returns a notifier to share between a process's Service and
// Engine.
func NewWake(pool *pgxpool.Pool) *wake.Notifier { return wake.New(pool) }

// NewMetrics registers hookstream's Prometheus collectors.
func NewMetrics(pool *pgxpool.Pool, log *slog.Logger) *metrics.Metrics {
	return metrics.NewMetrics(pool, log)
}

// MetricsHandler serves m in the Prometheus text format, behind token when set.
var MetricsHandler = api.MetricsHandler

// OpenAPIJSON is the committed OpenAPI document the API serves.
var OpenAPIJSON = api.OpenAPIJSON

// MarshalOpenAPI generates the OpenAPI document from the API's types.
func MarshalOpenAPI() []byte { return api.MarshalOpenAPI() }

// HotStatements are the statements ingest and the delivery handler run on
// every webhook; serve prepares them on its first connections before
// traffic, so no early request waits for their planning.
func HotStatements() []string {
	seen := map[string]bool{}
	var out []string
	for _, q := range append(ingest.HotStatements(), delivery.HotStatements()...) {
		if !seen[q] {
			seen[q] = true
			out = append(out, q)
		}
	}
	return out
}
