package api

import (
	"context"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/metrics"
	"github.com/hookstream/hookstream/internal/kit"
)

// parseWindow reads after, before (default: the last 24 hours) and
// granularity (default hour; at most 744 buckets).
func parseWindow(r *http.Request, now time.Time) (metrics.MetricsWindow, error) {
	q := r.URL.Query()
	w := metrics.MetricsWindow{Before: now, Granularity: "hour", SourceID: q.Get("source_id"), DestinationID: q.Get("destination_id")}
	w.After = now.Add(-24 * time.Hour)
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"after", &w.After}, {"before", &w.Before}} {
		t, err := timeParam(f.name, q.Get(f.name))
		if err != nil {
			return w, err
		}
		if t != nil {
			*f.dst = t.UTC()
		}
	}
	if g := q.Get("granularity"); g != "" {
		if g != "hour" && g != "day" {
			return w, domain.Errorf(domain.EInvalid, "Invalid query: 'granularity' must be hour or day")
		}
		w.Granularity = g
	}
	if !w.After.Before(w.Before) {
		return w, domain.Errorf(domain.EInvalid, "Invalid query: 'after' must be before 'before'")
	}
	step := time.Hour
	if w.Granularity == "day" {
		step = 24 * time.Hour
	}
	if w.Before.Sub(w.After)/step > 744 {
		return w, domain.Errorf(domain.EInvalid, "Invalid query: the window holds more than 744 %ss; narrow it or use a coarser granularity", w.Granularity)
	}
	return w, nil
}

func (a *API) registerMetricsRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/metrics/overview", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "overview")(svc.MetricsOverview(r.Context(), tenantOf(r)))
	})).Methods(http.MethodGet)
	series := func(path string, get func(context.Context, domain.Tenant, metrics.MetricsWindow) (any, error)) {
		r.HandleFunc(path, a.withAuth(func(w http.ResponseWriter, r *http.Request) {
			win, err := parseWindow(r, a.p.Now().UTC())
			if err != nil {
				writeError(w, r, a.p.Log, err)
				return
			}
			points, err := get(r.Context(), tenantOf(r), win)
			if err != nil {
				writeError(w, r, a.p.Log, err)
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"series": points, "granularity": win.Granularity,
				"after": kit.ISOTime(win.After), "before": kit.ISOTime(win.Before)})
		})).Methods(http.MethodGet)
	}
	series("/metrics/volume", func(ctx context.Context, t domain.Tenant, w metrics.MetricsWindow) (any, error) {
		return svc.MetricsVolume(ctx, t, w)
	})
	series("/metrics/deliveries", func(ctx context.Context, t domain.Tenant, w metrics.MetricsWindow) (any, error) {
		return svc.MetricsDeliveries(ctx, t, w)
	})
	series("/metrics/latency", func(ctx context.Context, t domain.Tenant, w metrics.MetricsWindow) (any, error) {
		w.Granularity = "hour"
		return svc.MetricsLatency(ctx, t, w)
	})
}
