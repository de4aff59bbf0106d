package api

import (
	"net/http"
	"net/url"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/projections"
)

func (a *API) registerEventRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/events", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := projections.EventFilter{SourceID: q.Get("source_id"), Status: q.Get("status"), Method: q.Get("method"),
			DedupStatus: q.Get("dedup_status"), VerificationStatus: q.Get("verification_status")}
		err := knownQuery(q, "source_id", "status", "method", "dedup_status", "verification_status", "after", "before", "limit", "offset",
			"cursor", "direction", "search")
		if err == nil {
			f.Cursor, f.Prev, err = cursorParams(q, "ev")
		}
		if err == nil {
			f.Search, err = searchParam(q, f.Prev)
		}
		if err == nil {
			err = enumParam("status", f.Status, "received", "processing", "delivered", "failed")
		}
		if err == nil {
			err = enumParam("dedup_status", f.DedupStatus, "unique", "duplicate")
		}
		if err == nil {
			err = enumParam("verification_status", f.VerificationStatus, "verified", "none")
		}
		if err == nil {
			f.Limit, f.Offset, err = pageParams(q.Get("limit"), q.Get("offset"))
		}
		if err == nil {
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

	r.HandleFunc("/events/{id}/retry", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		res, err := svc.RetryEvent(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r))
		a.respondRaw(w, r, res, err)
	})).Methods(http.MethodPost)
}

// searchParam reads search: 1-200 bytes matched against event ids and
// bodies. A search reads forward only (direction=prev is refused).
func searchParam(q url.Values, prev bool) (string, error) {
	v, ok := q["search"]
	if !ok {
		return "", nil
	}
	if len(v[0]) == 0 || len(v[0]) > 200 {
		return "", domain.Errorf(domain.EInvalid, "Invalid query: 'search' must be 1 to 200 bytes")
	}
	if prev {
		return "", domain.Errorf(domain.EInvalid, "Invalid query: a 'search' reads forward only; use its next_cursor (direction=next)")
	}
	if q.Get("offset") != "" {
		return "", domain.Errorf(domain.EInvalid, "Invalid query: a 'search' pages by cursor, not 'offset'; use its next_cursor")
	}
	return v[0], nil
}
