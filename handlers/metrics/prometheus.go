// Package metrics is what hookstream reports about itself: the Prometheus
// collectors (/metrics) and the tenant-facing figures of /v1/metrics/*.
package metrics

import (
	"context"
	"log/slog"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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
	expiredPayloads *prometheus.CounterVec
	reclaimedBytes  prometheus.Counter
	historyRemoved  *prometheus.CounterVec
	dispatched      *prometheus.CounterVec
	recordGroups    prometheus.Counter
	groupedBatches  prometheus.Counter
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
		expiredPayloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookstream_retention_payloads_expired_total",
			Help: "Payloads removed by retention in this process, by kind (event: a webhook's body and headers; attempt: an attempt's headers and response)."}, []string{"kind"}),
		reclaimedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "hookstream_retention_bytes_reclaimed_total",
			Help: "Stored payload bytes retention removed in this process."}),
		historyRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookstream_retention_history_removed_total",
			Help: "What history retention removed in this process, by kind (webhook: webhooks removed whole; log_row: events removed from the log)."}, []string{"kind"}),
		dispatched: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookstream_jobs_dispatched_total",
			Help: "Delivery jobs this process's engine sent to its lanes, by how it got them: claim (the dispatcher claimed it), handoff (leased by this process's ingest in its own transaction), chain (a retry due at once, sent by the lane that recorded the failure)."},
			[]string{"path"}),
		recordGroups: prometheus.NewCounter(prometheus.CounterOpts{Name: "hookstream_record_groups_total",
			Help: "Transactions that recorded lanes' batches of attempts together (the fast path); hookstream_record_group_batches_total / this is the batches per transaction."}),
		groupedBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "hookstream_record_group_batches_total",
			Help: "Lane batches recorded in those transactions."}),
		apiDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hookstream_http_request_duration_seconds",
			Help: "API request latency by route template, method and status.", Buckets: prometheus.DefBuckets},
			[]string{"route", "method", "code"}),
	}
	reg.MustRegister(m.deliveries, m.attemptDuration, m.ingestRequests, m.ingestBytes, m.apiDuration, m.expiredPayloads, m.reclaimedBytes, m.historyRemoved, m.dispatched, m.recordGroups, m.groupedBatches,
		// The live heap after the last GC beside the memstats: heap in use
		// also counts garbage not yet collected, so only the live heap
		// tells a leak from a busier allocation rate.
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&dbCollector{pool: pool, log: log})
	return m
}

// RecordAttempt counts one recorded attempt to a destination.
func (m *Metrics) RecordAttempt(destinationID string, r domain.DeliveryAttempted) {
	if m == nil {
		return
	}
	outcome := "failed"
	if r.Status == domain.AttemptSuccess {
		outcome = "success"
	}
	m.deliveries.WithLabelValues(destinationID, outcome).Inc()
	m.attemptDuration.WithLabelValues(outcome).Observe(float64(r.DurationMS) / 1000)
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
	descOldestLoad  = prometheus.NewDesc("hookstream_oldest_payload_age_seconds", "Age of the oldest webhook payload still kept, as of the last retention pass (0 when none).", nil, nil)
	descOldestEvent = prometheus.NewDesc("hookstream_oldest_webhook_age_seconds", "Age of the oldest webhook kept in an environment that bounds its history, as of the last retention pass (0 when none).", nil, nil)
	descPoolWait    = prometheus.NewDesc("hookstream_db_pool_acquire_wait_seconds_total", "Time spent waiting for a pool connection.", nil, nil)
)

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descOldestDue, descLagEvents, descLagSeconds, descCircuit, descPoolConns, descPoolMax, descPoolAcquire, descPoolWait, descOldestLoad, descOldestEvent} {
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
	var oldestPayload, oldestEvent *time.Time
	if err := c.pool.QueryRow(ctx, `SELECT min(s.oldest_payload_at), min(s.oldest_event_at) FILTER (WHERE e.history_retention_seconds IS NOT NULL)
		FROM retention_state s JOIN environments e ON e.id = s.env_id`).Scan(&oldestPayload, &oldestEvent); err != nil {
		c.log.Error("metrics: oldest payload", "err", err)
	} else {
		for d, at := range map[*prometheus.Desc]*time.Time{descOldestLoad: oldestPayload, descOldestEvent: oldestEvent} {
			age := 0.0
			if at != nil {
				age = max(0, now.Sub(*at).Seconds())
			}
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, age)
		}
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

// Dispatched counts n jobs sent to lanes by path (claim, handoff, chain).
func (m *Metrics) Dispatched(path string, n int) {
	if m != nil && n > 0 {
		m.dispatched.WithLabelValues(path).Add(float64(n))
	}
}

// RecordGroup counts one transaction that recorded batches lane batches.
func (m *Metrics) RecordGroup(batches int) {
	if m != nil {
		m.recordGroups.Inc()
		m.groupedBatches.Add(float64(batches))
	}
}

// RetentionBatch counts one batch of expired payloads.
func (m *Metrics) RetentionBatch(events, attempts int, bytes int64) {
	if m == nil {
		return
	}
	m.expiredPayloads.WithLabelValues("event").Add(float64(events))
	m.expiredPayloads.WithLabelValues("attempt").Add(float64(attempts))
	m.reclaimedBytes.Add(float64(bytes))
}

// RetentionHistory counts one batch of history removed.
func (m *Metrics) RetentionHistory(webhooks, logRows int) {
	if m == nil {
		return
	}
	m.historyRemoved.WithLabelValues("webhook").Add(float64(webhooks))
	m.historyRemoved.WithLabelValues("log_row").Add(float64(logRows))
}

// ObserveRequest records an API request's duration by route, method and
// status code, and counts ingest requests by status code.
func (m *Metrics) ObserveRequest(route, method, code string, elapsed time.Duration) {
	if m == nil {
		return
	}
	m.apiDuration.WithLabelValues(route, method, code).Observe(elapsed.Seconds())
	if route == "/v1/ingest/{source_id}" {
		m.ingestRequests.WithLabelValues(code).Inc()
	}
}

// CountIngestBytes counts the body bytes of an accepted webhook.
func (m *Metrics) CountIngestBytes(n int) {
	if m != nil {
		m.ingestBytes.Add(float64(n))
	}
}
