package api

import (
	"net/http"

	"github.com/gorilla/mux"
)

func (a *API) registerCircuitRoutes(r *mux.Router) {
	svc := a.p.Service
	r.HandleFunc("/destinations/{id}/circuit", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		res, err := svc.GetCircuit(r.Context(), tenantOf(r), mux.Vars(r)["id"])
		a.respondRaw(w, r, res, err)
	})).Methods(http.MethodGet)
	r.HandleFunc("/destinations/{id}/circuit/reset", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		res, err := svc.ResetCircuit(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r))
		a.respondRaw(w, r, res, err)
	})).Methods(http.MethodPost)
}
