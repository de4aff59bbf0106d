package handlers

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/projections"
)

// Metrics are hookstream's Prometheus metrics. Labels are bounded: routes
// are mux templates, destinations are configuration (never event, delivery
// or attempt ids).
type Metrics struct {
	Registry *prometheus.Registry

	deliveries      *prometheus.CounterVec
	attemptDuration *prometheus.HistogramVec
	ingestRequests  *prometheus.CounterVec
	ingestBytes     prometheus.Counter
	apiDuration     *prometheus.HistogramVec
}

// NewMetrics registers every metric; the database-derived ones (queue,
// lag, circuits, pool) are read at scrape time from pool.
func NewMetrics(pool *pgxpool.Pool, log *slog.Logger) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookstream_delivery_attempts_total",
			Help: "Delivery attempts recorded, by destination and outcome (success or failed)."}, []string{"destination_id", "outcome"}),
		attemptDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hookstream_delivery_attempt_duration_seconds",
			Help: "Duration of outbound delivery requests.", Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 120}},
			[]string{"outcome"}),
		ingestRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookstream_ingest_requests_total",
			Help: "Webhooks received at /v1/ingest, by HTTP status answered."}, []string{"code"}),
		ingestBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "hookstream_ingest_bytes_total",
			Help: "Body bytes of webhooks accepted at /v1/ingest."}),
		apiDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hookstream_http_request_duration_seconds",
			Help: "API request latency by route template, method and status.", Buckets: prometheus.DefBuckets},
			[]string{"route", "method", "code"}),
	}
	reg.MustRegister(m.deliveries, m.attemptDuration, m.ingestRequests, m.ingestBytes, m.apiDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&dbCollector{pool: pool, log: log})
	return m
}

// Handler serves the registry in the Prometheus text format; with a token,
// only to "Authorization: Bearer <token>" (401 otherwise). The metrics name
// every tenant's destinations: expose them to the operator only.
func (m *Metrics) Handler(token string) http.Handler {
	h := promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
	if token == "" {
		return h
	}
	want := sha256.Sum256([]byte("Bearer " + token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := sha256.Sum256([]byte(r.Header.Get("Authorization")))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			writeJSON(w, http.StatusUnauthorized, errorBody{Error: "Unauthorized", Status: http.StatusUnauthorized, RequestID: requestID(r)})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// recordAttempts counts a batch's recorded attempts.
func (m *Metrics) recordAttempts(batch []dispatchJob, results []domain.DeliveryAttempted) {
	if m == nil {
		return
	}
	for i, r := range results {
		outcome := "failed"
		if r.Status == domain.AttemptSuccess {
			outcome = "success"
		}
		m.deliveries.WithLabelValues(batch[i].DestinationID, outcome).Inc()
		m.attemptDuration.WithLabelValues(outcome).Observe(float64(r.DurationMS) / 1000)
	}
}

// dbCollector reads queue depth, consumer lag, circuit states and pool
// statistics when scraped.
type dbCollector struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

var (
	descJobs        = prometheus.NewDesc("hookstream_delivery_jobs", "Scheduled deliveries by state: due (waiting for a worker), in_flight (leased), later (not yet due).", []string{"state"}, nil)
	descOldestDue   = prometheus.NewDesc("hookstream_oldest_due_job_age_seconds", "How long the oldest due, unleased delivery has waited (0 when none).", nil, nil)
	descLagEvents   = prometheus.NewDesc("hookstream_consumer_lag_events", "Committed events of a consumer group's types it has not processed.", []string{"group"}, nil)
	descLagSeconds  = prometheus.NewDesc("hookstream_consumer_lag_seconds", "Age of the oldest event a consumer group has not processed.", []string{"group"}, nil)
	descCircuit     = prometheus.NewDesc("hookstream_circuit_state", "Circuit breaker state per destination: 0 closed, 1 half-open, 2 open.", []string{"destination_id"}, nil)
	descPoolConns   = prometheus.NewDesc("hookstream_db_pool_connections", "PostgreSQL pool connections by state.", []string{"state"}, nil)
	descPoolMax     = prometheus.NewDesc("hookstream_db_pool_max_connections", "PostgreSQL pool size limit.", nil, nil)
	descPoolAcquire = prometheus.NewDesc("hookstream_db_pool_acquires_total", "Connections acquired from the pool.", nil, nil)
	descPoolWait    = prometheus.NewDesc("hookstream_db_pool_acquire_wait_seconds_total", "Time spent waiting for a pool connection.", nil, nil)
)

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descOldestDue, descLagEvents, descLagSeconds, descCircuit, descPoolConns, descPoolMax, descPoolAcquire, descPoolWait} {
		ch <- d
	}
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(st.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(st.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(st.TotalConns()), "total")
	ch <- prometheus.MustNewConstMetric(descPoolMax, prometheus.GaugeValue, float64(st.MaxConns()))
	ch <- prometheus.MustNewConstMetric(descPoolAcquire, prometheus.CounterValue, float64(st.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(descPoolWait, prometheus.CounterValue, st.AcquireDuration().Seconds())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := time.Now()
	var due, inFlight, later int64
	var oldest *time.Time
	if err := c.pool.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $1)),
			count(*) FILTER (WHERE lease_until >= $1),
			count(*) FILTER (WHERE due_at > $1 AND (lease_until IS NULL OR lease_until < $1)),
			min(due_at) FILTER (WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $1))
		FROM delivery_jobs WHERE state = 'scheduled'`, now).Scan(&due, &inFlight, &later, &oldest); err != nil {
		c.log.Error("metrics: delivery jobs", "err", err)
	} else {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(due), "due")
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(inFlight), "in_flight")
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(later), "later")
		age := 0.0
		if oldest != nil {
			age = max(0, now.Sub(*oldest).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(descOldestDue, prometheus.GaugeValue, age)
	}
	if groups, err := projections.Status(ctx, c.pool, now); err != nil {
		c.log.Error("metrics: consumer lag", "err", err)
	} else {
		for _, g := range groups {
			ch <- prometheus.MustNewConstMetric(descLagEvents, prometheus.GaugeValue, float64(g.LagEvents), g.Group)
			ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, g.LagSeconds, g.Group)
		}
	}
	rows, err := c.pool.Query(ctx, `SELECT destination_id, state FROM destination_circuits`)
	if err != nil {
		c.log.Error("metrics: circuits", "err", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var dest, state string
		if err := rows.Scan(&dest, &state); err != nil {
			return
		}
		v := map[string]float64{domain.CircuitClosed: 0, domain.CircuitHalfOpen: 1, domain.CircuitOpen: 2}[state]
		ch <- prometheus.MustNewConstMetric(descCircuit, prometheus.GaugeValue, v, dest)
	}
}

// methodLabel bounds the method label: ingest accepts any method, and a
// public sender must not be able to mint metric series (or log lines of a
// megabyte) by inventing methods.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// statusWriter records the status and size of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

// withObservability logs one line per request and records its latency by
// route template. Bodies, headers and query strings are never logged.
func (a *API) withObservability(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		route := "unmatched"
		if cur := mux.CurrentRoute(r); cur != nil {
			if tpl, err := cur.GetPathTemplate(); err == nil {
				route = tpl
			}
		}
		elapsed := time.Since(started)
		code := strconv.Itoa(sw.status)
		if m := a.p.Metrics; m != nil {
			m.apiDuration.WithLabelValues(route, methodLabel(r.Method), code).Observe(elapsed.Seconds())
			if route == "/v1/ingest/{source_id}" {
				m.ingestRequests.WithLabelValues(code).Inc()
			}
		}
		level := slog.LevelInfo
		if sw.status >= 500 {
			level = slog.LevelError
		}
		a.p.Log.LogAttrs(r.Context(), level, "request", slog.String("request_id", requestID(r)), slog.String("method", methodLabel(r.Method)),
			slog.String("route", route), slog.Int("status", sw.status), slog.Int("bytes", sw.bytes),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000), slog.String("remote", r.RemoteAddr))
	})
}
