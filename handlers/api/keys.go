package api

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/kit"
)

func (a *API) registerKeyRoutes(r *mux.Router) {
	acc := a.p.Accounts
	r.HandleFunc("/auth/api-keys", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		if err := requireSession(t); err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		var in tenancy.APIKeyInput
		if !a.decode(w, r, &in) {
			return
		}
		if in.Name == nil {
			writeError(w, r, a.p.Log, kit.Invalidf("'name' is required"))
			return
		}
		p := tenancy.KeyParams{Name: *in.Name, OrgID: t.OrgID, EnvID: t.EnvID, Scopes: in.Scopes, Actor: t.Actor}
		if in.OrgID != nil && *in.OrgID != t.OrgID {
			writeError(w, r, a.p.Log, kit.NotFound("Environment"))
			return
		}
		if in.EnvID != nil {
			p.EnvID = *in.EnvID // CreateAPIKey checks it belongs to the organization
		}
		a.respond(w, r, http.StatusCreated, "api_key")(tenancy.CreateAPIKey(r.Context(), a.p.Pool, a.p.Store, p, a.p.Now()))
	})).Methods(http.MethodPost)
	r.HandleFunc("/auth/api-keys", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		a.respond(w, r, http.StatusOK, "api_keys")(acc.ListAPIKeys(r.Context(), t.OrgID, t.EnvID))
	})).Methods(http.MethodGet)
	r.HandleFunc("/auth/api-keys/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		if err := requireSession(t); err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		a.deleted(w, r, acc.RevokeAPIKey(r.Context(), t.OrgID, mux.Vars(r)["id"], t.Actor, a.p.Now()))
	})).Methods(http.MethodDelete)
}
