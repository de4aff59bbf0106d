package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hookstream/hookstream/handlers/metrics"
)

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
		a.p.Metrics.ObserveRequest(route, methodLabel(r.Method), code, elapsed)
		level := slog.LevelInfo
		if sw.status >= 500 {
			level = slog.LevelError
		}
		a.p.Log.LogAttrs(r.Context(), level, "request", slog.String("request_id", requestID(r)), slog.String("method", methodLabel(r.Method)),
			slog.String("route", route), slog.Int("status", sw.status), slog.Int("bytes", sw.bytes),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000), slog.String("remote", r.RemoteAddr))
	})
}

// MetricsHandler serves m's registry in the Prometheus text format; with a token,
// only to "Authorization: Bearer <token>" (401 otherwise). The metrics name
// every tenant's destinations: expose them to the operator only.
func MetricsHandler(m *metrics.Metrics, token string) http.Handler {
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

// Unwrap lets http.ResponseController reach the connection (flushes and
// write deadlines of streaming and long-poll routes).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
