package api

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/handlers/issues"
)

func (a *API) registerIssueRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/issues", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := issues.Filter{Status: q.Get("status"), DestinationID: q.Get("destination_id")}
		var err error
		if f.Limit, f.Offset, err = pageParams(q.Get("limit"), q.Get("offset")); err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		list, page, err := svc.ListIssues(r.Context(), tenantOf(r), f)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"issues": list, "pagination": page})
	})).Methods(http.MethodGet)
	r.HandleFunc("/issues/summary", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		res, err := svc.IssueSummary(r.Context(), tenantOf(r))
		a.respondRaw(w, r, res, err)
	})).Methods(http.MethodGet)
	r.HandleFunc("/issues/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "issue")(svc.GetIssue(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/issues/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in issues.Input
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusOK, "issue")(svc.UpdateIssue(r.Context(), tenantOf(r), mux.Vars(r)["id"], in, requestID(r)))
		}
	})).Methods(http.MethodPatch)
	r.HandleFunc("/issues/{id}/retry", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		res, err := svc.RetryIssue(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r))
		a.respondRaw(w, r, res, err)
	})).Methods(http.MethodPost)

	// Ingest is public: any method.
}
