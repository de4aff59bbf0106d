package metrics

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/kit"
)

// Reports answers /v1/metrics/overview, volume, deliveries and latency.
type Reports struct {
	pool *pgxpool.Pool
	now  func() time.Time
}

// NewReports returns the metrics endpoints' service.
func NewReports(pool *pgxpool.Pool, now func() time.Time) *Reports {
	return &Reports{pool: pool, now: func() time.Time { return now().UTC() }}
}

// MetricsWindow is a metrics query's window and bucket size.
type MetricsWindow struct {
	After, Before time.Time
	Granularity   string // hour | day
	SourceID      string
	DestinationID string
}

// Overview is GET /v1/metrics/overview (hookstream's fields; collections do not exist here and count 0).
type Overview struct {
	EventsToday        int      `json:"events_today"`
	EventsThisWeek     int      `json:"events_this_week"`
	ActiveSources      int      `json:"active_sources"`
	DeliveriesToday    int      `json:"deliveries_today"`
	SuccessToday       int      `json:"success_today"`
	FailedToday        int      `json:"failed_today"`
	SuccessRateToday   *float64 `json:"success_rate_today"`
	DLQCount           int      `json:"dlq_count"`
	ActiveDestinations int      `json:"active_destinations"`
	OpenIssues         int      `json:"open_issues"`
	ActiveCollections  int      `json:"active_collections"`
}

// MetricsOverview counts today's (UTC) and this week's (since Monday UTC)
// activity from the read models.
func (s *Reports) MetricsOverview(ctx context.Context, t domain.Tenant) (Overview, error) {
	now := s.now()
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	week := day.AddDate(0, 0, -((int(day.Weekday()) + 6) % 7))
	var o Overview
	err := s.pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM events_view WHERE org_id = $1 AND env_id = $2 AND received_at >= $3),
			(SELECT count(*) FROM events_view WHERE org_id = $1 AND env_id = $2 AND received_at >= $4),
			(SELECT count(*) FROM sources WHERE org_id = $1 AND env_id = $2 AND status = 'active'),
			(SELECT count(*) FILTER (WHERE status = 'success') FROM delivery_attempts WHERE org_id = $1 AND env_id = $2 AND created_at >= $3),
			(SELECT count(*) FILTER (WHERE status = 'failed') FROM delivery_attempts WHERE org_id = $1 AND env_id = $2 AND created_at >= $3),
			(SELECT count(*) FROM delivery_attempts WHERE org_id = $1 AND env_id = $2 AND is_dlq = 1),
			(SELECT count(*) FROM destinations WHERE org_id = $1 AND env_id = $2 AND status = 'active'),
			(SELECT count(*) FROM issues WHERE org_id = $1 AND env_id = $2 AND status = 'open')`,
		t.OrgID, t.EnvID, day, week).Scan(&o.EventsToday, &o.EventsThisWeek, &o.ActiveSources, &o.SuccessToday, &o.FailedToday,
		&o.DLQCount, &o.ActiveDestinations, &o.OpenIssues)
	if err != nil {
		return o, fmt.Errorf("metrics overview: %w", err)
	}
	o.DeliveriesToday = o.SuccessToday + o.FailedToday
	if o.DeliveriesToday > 0 {
		rate := math.Round(float64(o.SuccessToday)*10000/float64(o.DeliveriesToday)) / 100
		o.SuccessRateToday = &rate
	}
	return o, nil
}

// VolumePoint is one bucket of GET /v1/metrics/volume.
type VolumePoint struct {
	Bucket     string  `json:"bucket"`
	SourceID   string  `json:"source_id"`
	SourceName *string `json:"source_name"`
	EventCount int     `json:"event_count"`
}

// MetricsVolume counts received events per bucket and source.
func (s *Reports) MetricsVolume(ctx context.Context, t domain.Tenant, w MetricsWindow) ([]VolumePoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT date_trunc($5, received_at AT TIME ZONE 'UTC') AS b, source_id, max(source_name), count(*)
		FROM events_view WHERE org_id = $1 AND env_id = $2 AND received_at >= $3 AND received_at < $4 AND ($6 = '' OR source_id = $6)
		GROUP BY b, source_id ORDER BY b, source_id`, t.OrgID, t.EnvID, w.After, w.Before, w.Granularity, w.SourceID)
	out, err := kit.CollectRows(rows, err, func(r pgx.Row) (VolumePoint, error) {
		var p VolumePoint
		var b time.Time
		err := r.Scan(&b, &p.SourceID, &p.SourceName, &p.EventCount)
		p.Bucket = kit.ISOTime(b)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("metrics volume: %w", err)
	}
	return out, nil
}

// DeliveryPoint is one bucket of GET /v1/metrics/deliveries: attempts made
// (pending ones are not counted) per destination.
type DeliveryPoint struct {
	Bucket          string   `json:"bucket"`
	DestinationID   string   `json:"destination_id"`
	DestinationName *string  `json:"destination_name"`
	DeliveryCount   int      `json:"delivery_count"`
	SuccessCount    int      `json:"success_count"`
	FailureCount    int      `json:"failure_count"`
	DLQCount        int      `json:"dlq_count"`
	AvgDurationMS   *float64 `json:"avg_duration_ms"`
}

// MetricsDeliveries counts attempts per bucket (by created_at) and destination.
func (s *Reports) MetricsDeliveries(ctx context.Context, t domain.Tenant, w MetricsWindow) ([]DeliveryPoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT date_trunc($5, created_at AT TIME ZONE 'UTC') AS b, destination_id, max(destination_name),
			count(*), count(*) FILTER (WHERE status = 'success'), count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE is_dlq = 1),
			round(avg(duration_ms)::numeric, 1)::float8
		FROM delivery_attempts WHERE org_id = $1 AND env_id = $2 AND created_at >= $3 AND created_at < $4 AND status <> 'pending'
			AND ($6 = '' OR destination_id = $6)
		GROUP BY b, destination_id ORDER BY b, destination_id`, t.OrgID, t.EnvID, w.After, w.Before, w.Granularity, w.DestinationID)
	out, err := kit.CollectRows(rows, err, func(r pgx.Row) (DeliveryPoint, error) {
		var p DeliveryPoint
		var b time.Time
		err := r.Scan(&b, &p.DestinationID, &p.DestinationName, &p.DeliveryCount, &p.SuccessCount, &p.FailureCount, &p.DLQCount, &p.AvgDurationMS)
		p.Bucket = kit.ISOTime(b)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("metrics deliveries: %w", err)
	}
	return out, nil
}

// LatencyPoint is one hour of GET /v1/metrics/latency for one destination.
type LatencyPoint struct {
	Bucket          string  `json:"bucket"`
	DestinationID   string  `json:"destination_id"`
	DestinationName *string `json:"destination_name"`
	Count           int     `json:"count"`
	P50MS           float64 `json:"p50_ms"`
	P95MS           float64 `json:"p95_ms"`
	P99MS           float64 `json:"p99_ms"`
}

// MetricsLatency is the p50/p95/p99 of attempt durations per destination,
// always hourly, over attempts that got an answer or timed out.
func (s *Reports) MetricsLatency(ctx context.Context, t domain.Tenant, w MetricsWindow) ([]LatencyPoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AS b, destination_id, max(destination_name), count(*),
			percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms),
			percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)
		FROM delivery_attempts WHERE org_id = $1 AND env_id = $2 AND created_at >= $3 AND created_at < $4 AND status <> 'pending'
			AND duration_ms IS NOT NULL AND ($5 = '' OR destination_id = $5)
		GROUP BY b, destination_id ORDER BY b, destination_id`, t.OrgID, t.EnvID, w.After, w.Before, w.DestinationID)
	out, err := kit.CollectRows(rows, err, func(r pgx.Row) (LatencyPoint, error) {
		var p LatencyPoint
		var b time.Time
		err := r.Scan(&b, &p.DestinationID, &p.DestinationName, &p.Count, &p.P50MS, &p.P95MS, &p.P99MS)
		p.Bucket = kit.ISOTime(b)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("metrics latency: %w", err)
	}
	return out, nil
}
