// Package api is hookstream's REST API over HTTP: routes (a file per
// resource), request decoding and its checks, authentication and CSRF
// middleware, errors mapped to statuses in one place, and the OpenAPI
// document. Every route calls one method of Services.
package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
	"github.com/hookstream/hookstream/handlers/circuit"
	"github.com/hookstream/hookstream/handlers/dashboard"
	"github.com/hookstream/hookstream/handlers/ingest"
	"github.com/hookstream/hookstream/handlers/issues"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/handlers/redeliver"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/migrations"
	"github.com/hookstream/hookstream/projections"
)

// Params configure the REST API.
type Params struct {
	Service *Services
	Pool    *pgxpool.Pool
	Store   *eventstore.Store // default: eventstore.New(Now)
	Log     *slog.Logger
	Version string
	Now     func() time.Time
	// Metrics, when set, are recorded; they are served at /metrics on this
	// handler when MetricsOnAPI is set (behind MetricsToken when that is set).
	Metrics      *metrics.Metrics
	MetricsOnAPI bool
	MetricsToken string
	// Accounts manages keys, environments and sessions (default: over Pool).
	Accounts *tenancy.Accounts
	// CookieSecret signs session cookies as Better Auth does (unsigned when empty).
	CookieSecret []byte
	// SecureCookies marks session cookies Secure (the API is served over HTTPS).
	SecureCookies bool
	// ReadyMaxLag is the consumer lag /v1/ready tolerates (default 60s).
	ReadyMaxLag time.Duration
	// NoDashboard leaves the web dashboard (GET / and /assets/) out.
	NoDashboard bool
}

// Services are the use cases the routes call, one role each.
type Services struct {
	*resources.Registry
	*ingest.Ingester
	*projections.Reads
	*redeliver.Redeliverer
	*issues.Tracker
	*circuit.Breakers
	*metrics.Reports
}

// Close stops what the services run in the background: ingest's group
// committer and the listener of waiting retries.
func (s *Services) Close() {
	s.Ingester.Close()
	s.Redeliverer.Stop()
}

// API is the REST API's http.Handler.
type API struct {
	p      Params
	router *mux.Router
	usage  *tenancy.KeyUsage
	tails  tailSlots
	// routes is every route's path pattern and methods (for 405s).
	routes []routeMethods
}

// New builds the REST API with every route registered.
func New(p Params) *API {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.ReadyMaxLag <= 0 {
		p.ReadyMaxLag = time.Minute
	}
	if p.Store == nil {
		p.Store = eventstore.New(p.Now)
	}
	if p.Accounts == nil {
		p.Accounts = tenancy.NewAccounts(p.Pool, p.Store)
	}
	a := &API{p: p, router: mux.NewRouter(), usage: tenancy.NewKeyUsage(p.Pool)}
	a.router.Use(a.withRequestID, a.withObservability, a.withRecovery)
	if p.Metrics != nil && p.MetricsOnAPI {
		a.router.Handle("/metrics", MetricsHandler(p.Metrics, p.MetricsToken)).Methods(http.MethodGet)
	}
	if !p.NoDashboard {
		ui := dashboard.Handler()
		a.router.Handle("/", ui)
		a.router.PathPrefix("/assets/").Handler(ui)
	}
	v1 := a.router.PathPrefix("/v1").Subrouter()
	// Ingest first: gorilla/mux tries routes in order, and the public
	// senders' route is the hot one (its regexp matching was 3-4% of the
	// engine's CPU when registered last).
	a.registerIngestRoutes(v1)
	a.registerHealthRoutes(v1)
	a.registerAuthRoutes(v1)
	a.registerResourceRoutes(v1)
	a.registerDeliveryRoutes(v1)
	a.registerMetricsRoutes(v1)
	a.routes = a.methodTable()
	a.router.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, newRequestID()))
		// gorilla/mux reports a method its subrouter does not serve as not
		// found: a path that exists with other methods is a 405 here.
		if allow := a.allowedMethods(r.URL.Path); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "Method not allowed", Status: http.StatusMethodNotAllowed, RequestID: requestID(r)})
			return
		}
		writeError(w, r, a.p.Log, domain.Errorf(domain.ENotFound, "Not found"))
	})
	a.router.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, newRequestID()))
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "Method not allowed", Status: http.StatusMethodNotAllowed, RequestID: requestID(r)})
	})
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.router.ServeHTTP(w, r) }

// routeMethods is a route's path pattern and the methods it serves.
type routeMethods struct {
	path    *regexp.Regexp
	methods []string
}

// methodTable lists every route that serves named methods, once the routes
// are registered.
func (a *API) methodTable() []routeMethods {
	var out []routeMethods
	_ = a.router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		re, err := route.GetPathRegexp()
		if err != nil {
			return nil
		}
		methods, err := route.GetMethods()
		if err != nil {
			return nil // a route for every method (or a prefix): never a 405
		}
		out = append(out, routeMethods{path: regexp.MustCompile(re), methods: methods})
		return nil
	})
	return out
}

// allowedMethods are the methods the routes whose path matches path serve,
// sorted (none: the path does not exist).
func (a *API) allowedMethods(path string) []string {
	var out []string
	for _, rm := range a.routes {
		if rm.path.MatchString(path) {
			for _, m := range rm.methods {
				if !slices.Contains(out, m) {
					out = append(out, m)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// withRecovery turns a handler's panic into the generic 500 with the request
// id, logged once with the panic, instead of a dropped connection (or, on a
// goroutine of its own, a crashed process).
func (a *API) withRecovery(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v) // the server's own way to abort a response
				}
				writeError(w, r, a.p.Log, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (a *API) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rid := newRequestID()
		w.Header().Set("X-Request-Id", rid)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, rid)))
	})
}

func (a *API) registerHealthRoutes(r *mux.Router) {
	r.HandleFunc("/health", a.health).Methods(http.MethodGet)
	r.HandleFunc("/ready", a.ready).Methods(http.MethodGet)
	r.HandleFunc("/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(OpenAPIJSON)
	}).Methods(http.MethodGet)
}

// ready is readiness for load balancers and orchestrators: the database
// answers, every migration is applied (and none edited), and every consumer
// group is within ReadyMaxLag of the log. 503 names what is not ready.
func (a *API) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	checks := map[string]string{"database": "ok", "migrations": "ok", "consumer_lag": "ok"}
	ok := true
	fail := func(check, why string) { checks[check], ok = why, false }
	if err := a.p.Pool.Ping(ctx); err != nil {
		fail("database", "unreachable")
		fail("migrations", "unknown")
		fail("consumer_lag", "unknown")
	} else {
		if pending, edited, err := migrations.Pending(ctx, a.p.Pool); err != nil {
			fail("migrations", "unknown: "+domain.ErrorMessage(err))
		} else if len(pending) > 0 || len(edited) > 0 {
			fail("migrations", fmt.Sprintf("%d pending, %d edited", len(pending), len(edited)))
		}
		if groups, err := projections.Status(ctx, a.p.Pool, a.p.Now()); err != nil {
			fail("consumer_lag", "unknown")
		} else {
			for _, g := range groups {
				if g.LagSeconds > a.p.ReadyMaxLag.Seconds() {
					fail("consumer_lag", fmt.Sprintf("%s is %.0fs behind (limit %.0fs)", g.Group, g.LagSeconds, a.p.ReadyMaxLag.Seconds()))
				}
			}
		}
	}
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"status": map[bool]string{true: "ready", false: "not_ready"}[ok], "checks": checks})
}

// health is liveness plus a database ping, for humans and load balancers.
func (a *API) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	db := "ok"
	status := http.StatusOK
	if err := a.p.Pool.Ping(ctx); err != nil {
		db = "unreachable"
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{
		"status":   map[bool]string{true: "ok", false: "degraded"}[status == http.StatusOK],
		"database": db,
		"version":  a.p.Version,
		"time":     a.p.Now().UTC().Format(time.RFC3339),
	})
}
