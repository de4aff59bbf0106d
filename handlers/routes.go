package handlers

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
)

type tenantKey struct{}

func tenantOf(r *http.Request) Tenant {
	t, _ := r.Context().Value(tenantKey{}).(Tenant)
	return t
}

// withAuth rejects requests without valid credentials (401) and scopes the rest.
func (a *API) withAuth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t, err := authenticate(r.Context(), a.p.Pool, r, a.p.Now())
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, t)))
	}
}

func (a *API) registerResourceRoutes(r *mux.Router) {
	svc := a.p.Service
	// Sources.
	r.HandleFunc("/sources", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in SourceInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusCreated, "source")(svc.CreateSource(r.Context(), tenantOf(r), in, requestID(r)))
		}
	})).Methods(http.MethodPost)
	r.HandleFunc("/sources", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "sources")(svc.ListSources(r.Context(), tenantOf(r), r.URL.Query().Get("status")))
	})).Methods(http.MethodGet)
	r.HandleFunc("/sources/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "source")(svc.GetSource(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/sources/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in SourceInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusOK, "source")(svc.UpdateSource(r.Context(), tenantOf(r), mux.Vars(r)["id"], in, requestID(r)))
		}
	})).Methods(http.MethodPatch)
	r.HandleFunc("/sources/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.deleted(w, r, svc.DeleteSource(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r)))
	})).Methods(http.MethodDelete)

	// Destinations.
	r.HandleFunc("/destinations", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in DestinationInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusCreated, "destination")(svc.CreateDestination(r.Context(), tenantOf(r), in, requestID(r)))
		}
	})).Methods(http.MethodPost)
	r.HandleFunc("/destinations", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "destinations")(svc.ListDestinations(r.Context(), tenantOf(r), r.URL.Query().Get("status")))
	})).Methods(http.MethodGet)
	r.HandleFunc("/destinations/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "destination")(svc.GetDestination(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/destinations/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in DestinationInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusOK, "destination")(svc.UpdateDestination(r.Context(), tenantOf(r), mux.Vars(r)["id"], in, requestID(r)))
		}
	})).Methods(http.MethodPatch)
	r.HandleFunc("/destinations/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.deleted(w, r, svc.DeleteDestination(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r)))
	})).Methods(http.MethodDelete)

	// Connections.
	r.HandleFunc("/connections", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in ConnectionInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusCreated, "connection")(svc.CreateConnection(r.Context(), tenantOf(r), in, requestID(r)))
		}
	})).Methods(http.MethodPost)
	r.HandleFunc("/connections", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		a.respond(w, r, http.StatusOK, "connections")(svc.ListConnections(r.Context(), tenantOf(r), q.Get("source_id"), q.Get("destination_id"), q.Get("status")))
	})).Methods(http.MethodGet)
	r.HandleFunc("/connections/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "connection")(svc.GetConnection(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/connections/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in ConnectionInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusOK, "connection")(svc.UpdateConnection(r.Context(), tenantOf(r), mux.Vars(r)["id"], in, requestID(r)))
		}
	})).Methods(http.MethodPatch)
	r.HandleFunc("/connections/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.deleted(w, r, svc.DeleteConnection(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r)))
	})).Methods(http.MethodDelete)
}

func (a *API) registerDeliveryRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/delivery-attempts", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := AttemptFilter{EventID: q.Get("event_id"), ConnectionID: q.Get("connection_id"), DestinationID: q.Get("destination_id"), Status: q.Get("status")}
		var err error
		if f.Limit, f.Offset, err = pageParams(q.Get("limit"), q.Get("offset")); err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		if f.Status != "" && f.Status != domain.AttemptPending && f.Status != domain.AttemptSuccess && f.Status != domain.AttemptFailed {
			writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Invalid query: 'status' must be one of pending, success, failed"))
			return
		}
		if v := q.Get("is_dlq"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || (n != 0 && n != 1) {
				writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Invalid query: 'is_dlq' must be 0 or 1"))
				return
			}
			f.IsDLQ = &n
		}
		list, page, err := svc.ListAttempts(r.Context(), tenantOf(r), f)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"delivery_attempts": list, "pagination": page})
	})).Methods(http.MethodGet)
	r.HandleFunc("/delivery-attempts/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "delivery_attempt")(svc.GetAttempt(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/delivery-attempts/{id}/retry", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		wait := true
		if v := r.URL.Query().Get("wait"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Invalid query: 'wait' must be true or false"))
				return
			}
			wait = b
		}
		a.respond(w, r, http.StatusOK, "delivery_attempt")(svc.RetryAttempt(r.Context(), tenantOf(r), mux.Vars(r)["id"], wait, requestID(r)))
	})).Methods(http.MethodPost)

	r.HandleFunc("/events", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := EventFilter{SourceID: q.Get("source_id"), Status: q.Get("status"), Method: q.Get("method")}
		var err error
		if f.Limit, f.Offset, err = pageParams(q.Get("limit"), q.Get("offset")); err == nil {
			f.After, err = timeParam("after", q.Get("after"))
		}
		if err == nil {
			f.Before, err = timeParam("before", q.Get("before"))
		}
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		list, page, err := svc.ListEvents(r.Context(), tenantOf(r), f)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"events": list, "pagination": page})
	})).Methods(http.MethodGet)
	r.HandleFunc("/events/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "event")(svc.GetEvent(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)

	// Ingest is public: any method.
	r.HandleFunc("/ingest/{source_id}", a.ingest)
}

func (a *API) ingest(w http.ResponseWriter, r *http.Request) {
	limit := a.p.Service.p.MaxIngestBody
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, r, a.p.Log, domain.Errorf(domain.ETooLarge, "Payload too large (limit %d bytes)", limit))
			return
		}
		writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Could not read the request body"))
		return
	}
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	res, err := a.p.Service.Ingest(r.Context(), IngestRequest{
		SourceID: mux.Vars(r)["source_id"], Method: r.Method, Headers: r.Header, Query: r.URL.Query(),
		Body: body, SourceIP: ip, RequestID: requestID(r),
	})
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func pageParams(limitS, offsetS string) (int, int, error) {
	limit, offset := 50, 0
	if limitS != "" {
		n, err := strconv.Atoi(limitS)
		if err != nil || n < 1 || n > 100 {
			return 0, 0, domain.Errorf(domain.EInvalid, "Invalid query: 'limit' must be an integer from 1 to 100")
		}
		limit = n
	}
	if offsetS != "" {
		n, err := strconv.Atoi(offsetS)
		if err != nil || n < 0 {
			return 0, 0, domain.Errorf(domain.EInvalid, "Invalid query: 'offset' must be a non-negative integer")
		}
		offset = n
	}
	return limit, offset, nil
}

func timeParam(name, v string) (*time.Time, error) {
	if v == "" {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, domain.Errorf(domain.EInvalid, "Invalid query: '%s' must be an ISO 8601 time", name)
	}
	return &t, nil
}

// decode parses the body into dst, writing the error response itself; it
// reports whether the handler should go on.
func (a *API) decode(w http.ResponseWriter, r *http.Request, dst any) bool {
	if err := decodeJSON(w, r, dst); err != nil {
		writeError(w, r, a.p.Log, err)
		return false
	}
	return true
}

// respond returns a function that writes {key: v} or the error.
func (a *API) respond(w http.ResponseWriter, r *http.Request, status int, key string) func(any, error) {
	return func(v any, err error) {
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		writeJSON(w, status, map[string]any{key: v})
	}
}

func (a *API) deleted(w http.ResponseWriter, r *http.Request, err error) {
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}
