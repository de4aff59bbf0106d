package api

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/handlers/tenancy"
)

func (a *API) registerEnvironmentRoutes(r *mux.Router) {
	acc := a.p.Accounts
	r.HandleFunc("/environments", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in tenancy.EnvironmentInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusCreated, "environment")(acc.CreateEnvironment(r.Context(), tenantOf(r), in, a.p.Now()))
		}
	})).Methods(http.MethodPost)
	r.HandleFunc("/environments", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "environments")(acc.ListEnvironments(r.Context(), tenantOf(r)))
	})).Methods(http.MethodGet)
	r.HandleFunc("/environments/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, "environment")(acc.GetEnvironment(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	r.HandleFunc("/environments/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in tenancy.EnvironmentInput
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusOK, "environment")(acc.UpdateEnvironment(r.Context(), tenantOf(r), mux.Vars(r)["id"], in, a.p.Now()))
		}
	})).Methods(http.MethodPatch)
}
