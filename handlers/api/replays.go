package api

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/handlers/redeliver"
)

func (a *API) registerReplayRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/replay", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in redeliver.ReplayInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusCreated, "job")(svc.CreateReplay(r.Context(), tenantOf(r), in, requestID(r)))
		}
	})).Methods(http.MethodPost)
	r.HandleFunc("/replay", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, offset, err := pageParams(q.Get("limit"), q.Get("offset"))
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		list, page, err := svc.ListReplays(r.Context(), tenantOf(r), limit, offset)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"jobs": list, "pagination": page})
	})).Methods(http.MethodGet)
	r.HandleFunc("/replay/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "job")(svc.GetReplay(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/replay/{id}/cancel", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "job")(svc.CancelReplay(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r)))
	})).Methods(http.MethodPost)
}
