package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/audit"
	"github.com/hookstream/hookstream/projections"
)

func (a *API) registerAttemptRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/delivery-attempts", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := projections.AttemptFilter{EventID: q.Get("event_id"), DeliveryID: q.Get("delivery_id"), ConnectionID: q.Get("connection_id"),
			DestinationID: q.Get("destination_id"), Status: q.Get("status")}
		err := knownQuery(q, "event_id", "delivery_id", "connection_id", "destination_id", "status", "is_dlq", "recovered", "limit", "offset", "cursor", "direction")
		if err == nil {
			f.Cursor, f.Prev, err = cursorParams(q, "at")
		}
		if err == nil {
			f.Limit, f.Offset, err = pageParams(q.Get("limit"), q.Get("offset"))
		}
		if err == nil {
			err = enumParam("status", f.Status, domain.AttemptPending, domain.AttemptSuccess, domain.AttemptFailed)
		}
		if err == nil {
			f.IsDLQ, err = flagParam("is_dlq", q.Get("is_dlq"))
		}
		if err == nil {
			f.Recovered, err = flagParam("recovered", q.Get("recovered"))
		}
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
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
	r.HandleFunc("/delivery-attempts/{id}/history", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "history")(a.attemptHistory(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/delivery-attempts/{id}/retry", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		wait, ok := a.waitParam(w, r)
		if !ok {
			return
		}
		a.respond(w, r, http.StatusOK, "delivery_attempt")(svc.RetryAttempt(r.Context(), tenantOf(r), mux.Vars(r)["id"], wait, requestID(r)))
	})).Methods(http.MethodPost)
}

// waitParam reads ?wait= (default true), writing the 400 itself; waiting
// for an outcome outlives the server's write timeout (up to the
// destination's timeout, at most 120 s, plus recording), so it extends it.
func (a *API) waitParam(w http.ResponseWriter, r *http.Request) (wait, ok bool) {
	wait = true
	if v := r.URL.Query().Get("wait"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Invalid query: 'wait' must be true or false"))
			return false, false
		}
		wait = b
	}
	if wait {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(LongPollWrite))
	}
	return wait, true
}

// attemptHistory is the causal history of an attempt's delivery (what
// `hookstream audit delivery` prints): its event's stream and the delivery's
// stream in commit order, each event with a one-line summary. The stored
// payloads are left out; the attempt itself shows what it sent and got.
func (a *API) attemptHistory(ctx context.Context, t domain.Tenant, id string) (audit.Report, error) {
	at, err := a.p.Service.GetAttempt(ctx, t, id) // another tenant's attempt is a 404
	if err != nil {
		return audit.Report{}, err
	}
	rep, err := audit.Build(ctx, a.p.Pool, audit.Request{Kind: "delivery", ID: at.DeliveryID})
	if err != nil {
		return rep, err
	}
	for i := range rep.Events {
		rep.Events[i].Payload = nil
	}
	return rep, nil
}
