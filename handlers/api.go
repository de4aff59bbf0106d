package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
)

// APIParams configure the REST API.
type APIParams struct {
	Service *Service
	Pool    *pgxpool.Pool
	Log     *slog.Logger
	Version string
	Now     func() time.Time
}

// API is the REST API's http.Handler.
type API struct {
	p      APIParams
	router *mux.Router
}

// NewAPI builds the REST API with every route registered.
func NewAPI(p APIParams) *API {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	a := &API{p: p, router: mux.NewRouter()}
	a.router.Use(a.withRequestID)
	v1 := a.router.PathPrefix("/v1").Subrouter()
	a.registerHealthRoutes(v1)
	a.registerResourceRoutes(v1)
	a.registerDeliveryRoutes(v1)
	a.router.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, newRequestID()))
		writeError(w, r, a.p.Log, domain.Errorf(domain.ENotFound, "Not found"))
	})
	a.router.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, newRequestID()))
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "Method not allowed", Status: http.StatusMethodNotAllowed, RequestID: requestID(r)})
	})
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.router.ServeHTTP(w, r) }

func (a *API) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rid := newRequestID()
		w.Header().Set("X-Request-Id", rid)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, rid)))
	})
}

func (a *API) registerHealthRoutes(r *mux.Router) {
	r.HandleFunc("/health", a.health).Methods(http.MethodGet)
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
