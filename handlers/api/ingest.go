package api

import "github.com/gorilla/mux"

func (a *API) registerIngestRoutes(r *mux.Router) {
	r.HandleFunc("/ingest/{source_id}", a.ingest)
}
