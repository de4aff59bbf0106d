package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/redeliver"
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
	r.HandleFunc("/destinations/{id}/test", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in redeliver.SendTestInput
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAPIBody))
		if err != nil {
			writeError(w, r, a.p.Log, domain.Errorf(domain.ETooLarge, "Payload too large (limit %d bytes)", maxAPIBody))
			return
		}
		if len(bytes.TrimSpace(raw)) > 0 {
			if err := decodeBytes(raw, &in); err != nil {
				writeError(w, r, a.p.Log, err)
				return
			}
		}
		if len(in.Payload) > 0 && !json.Valid(in.Payload) {
			writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Invalid body: 'payload' must be JSON"))
			return
		}
		wait, ok := a.waitParam(w, r)
		if !ok {
			return
		}
		res, err := svc.SendTest(r.Context(), tenantOf(r), mux.Vars(r)["id"], in, wait, requestID(r))
		a.respondRaw(w, r, res, err)
	})).Methods(http.MethodPost)
}
