package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/ingest"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/projections"
)

// LongPollWrite is the write deadline of a request that waits for a
// delivery's outcome; every other response must be written within the
// server's WriteTimeout.
const LongPollWrite = 150 * time.Second

type tenantKey struct{}

func tenantOf(r *http.Request) domain.Tenant {
	t, _ := r.Context().Value(tenantKey{}).(domain.Tenant)
	return t
}

// withAuth rejects requests without valid credentials (401) and scopes the
// rest; cookie-authenticated writes must also pass the CSRF checks (403),
// and query parameters PostgreSQL cannot hold are a 400.
func (a *API) withAuth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := a.p.Now()
		t, err := tenancy.Authenticate(r.Context(), a.p.Pool, r, now, a.p.CookieSecret)
		if err == nil && t.KeyID == "" {
			err = checkCSRF(r, t) // authenticated by the session cookie
		}
		if err == nil {
			err = checkQuery(r)
		}
		if err == nil && t.KeyID != "" {
			err = a.usage.Record(r.Context(), t.KeyID, now)
		}
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, t)))
	}
}

// crudRoutes are the five routes of a configuration resource.
type crudRoutes[In, Out any] struct {
	path, one, many string // "/sources", "source", "sources"
	create          func(context.Context, domain.Tenant, In, string) (Out, error)
	list            func(*http.Request, domain.Tenant, resources.Page) ([]Out, resources.Page, error)
	// listQuery are the list's filters (limit and cursor come with every list).
	listQuery []string
	get       func(context.Context, domain.Tenant, string) (Out, error)
	update    func(context.Context, domain.Tenant, string, In, string) (Out, error)
	remove    func(context.Context, domain.Tenant, string, string) error
	// fixed are input fields a create sets and an update cannot change: a
	// PATCH may repeat them unchanged.
	fixed []string
}

func registerCRUD[In, Out any](a *API, r *mux.Router, c crudRoutes[In, Out]) {
	r.HandleFunc(c.path, a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var in In
		if a.decode(w, r, &in) {
			a.respond(w, r, http.StatusCreated, c.one)(c.create(r.Context(), tenantOf(r), in, requestID(r)))
		}
	})).Methods(http.MethodPost)
	r.HandleFunc(c.path, a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		pg, err := listPage(q, c.listQuery)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		items, next, err := c.list(r, tenantOf(r), pg)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		var cursor *string // the next page's, null on the last
		if next.HasMore {
			cursor = &next.After
		}
		writeJSON(w, http.StatusOK, map[string]any{c.many: items, "has_more": next.HasMore, "cursor": cursor})
	})).Methods(http.MethodGet)
	r.HandleFunc(c.path+"/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.respond(w, r, http.StatusOK, c.one)(c.get(r.Context(), tenantOf(r), mux.Vars(r)["id"]))
	})).Methods(http.MethodGet)
	readOnly := readOnlyFields[In, Out]()
	r.HandleFunc(c.path+"/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		var raw map[string]json.RawMessage
		if !a.decode(w, r, &raw) {
			return
		}
		id := mux.Vars(r)["id"]
		in, err := patchInput[In](raw, readOnly, c.fixed, func() (Out, error) { return c.get(r.Context(), tenantOf(r), id) })
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		a.respond(w, r, http.StatusOK, c.one)(c.update(r.Context(), tenantOf(r), id, in, requestID(r)))
	})).Methods(http.MethodPatch)
	r.HandleFunc(c.path+"/{id}", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		a.deleted(w, r, c.remove(r.Context(), tenantOf(r), mux.Vars(r)["id"], requestID(r)))
	})).Methods(http.MethodDelete)
}

// readOnlyFields are the fields of a resource's object (Out) its input (In)
// does not take: id, timestamps, names and URLs the server derives.
func readOnlyFields[In, Out any]() []string {
	in := jsonFields(reflect.TypeFor[In]())
	var out []string
	for _, f := range jsonFields(reflect.TypeFor[Out]()) {
		if !slices.Contains(in, f) {
			out = append(out, f)
		}
	}
	return out
}

func jsonFields(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// patchInput decodes a PATCH body into In. So that a client can send back
// the object a GET gave it, the read-only fields are accepted when they
// equal the stored object's and refused, named, when they differ (a stale
// updated_at says someone changed it meanwhile).
func patchInput[In, Out any](raw map[string]json.RawMessage, readOnly, fixed []string, current func() (Out, error)) (In, error) {
	var in In
	var given []string
	for _, f := range append(append([]string(nil), readOnly...), fixed...) {
		if _, ok := raw[f]; ok {
			given = append(given, f)
		}
	}
	if len(given) > 0 {
		cur, err := current()
		if err != nil {
			return in, err
		}
		b, err := json.Marshal(cur)
		if err != nil {
			return in, err
		}
		var stored map[string]json.RawMessage
		if err := json.Unmarshal(b, &stored); err != nil {
			return in, err
		}
		for _, f := range given {
			if !sameJSON(raw[f], stored[f]) {
				what := "is read-only"
				if slices.Contains(fixed, f) {
					what = "cannot be changed"
				}
				return in, domain.Errorf(domain.EInvalid, "Invalid body: '%s' %s and differs from the stored value %s", f, what, stored[f])
			}
			delete(raw, f)
		}
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return in, err
	}
	return in, decodeBytes(b, &in)
}

// sameJSON reports whether two JSON texts hold the same value.
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func (a *API) registerResourceRoutes(r *mux.Router) {
	svc := a.p.Service
	registerCRUD(a, r, crudRoutes[resources.SourceInput, resources.Source]{
		path: "/sources", one: "source", many: "sources", fixed: []string{"org_id", "env_id", "type"},
		create: svc.CreateSource, get: svc.GetSource, update: svc.UpdateSource, remove: svc.DeleteSource,
		listQuery: []string{"status"},
		list: func(r *http.Request, t domain.Tenant, pg resources.Page) ([]resources.Source, resources.Page, error) {
			return svc.ListSources(r.Context(), t, r.URL.Query().Get("status"), pg)
		},
	})
	registerCRUD(a, r, crudRoutes[resources.DestinationInput, resources.Destination]{
		path: "/destinations", one: "destination", many: "destinations", fixed: []string{"org_id", "env_id", "type"},
		create: svc.CreateDestination, get: svc.GetDestination, update: svc.UpdateDestination, remove: svc.DeleteDestination,
		listQuery: []string{"status"},
		list: func(r *http.Request, t domain.Tenant, pg resources.Page) ([]resources.Destination, resources.Page, error) {
			return svc.ListDestinations(r.Context(), t, r.URL.Query().Get("status"), pg)
		},
	})
	registerCRUD(a, r, crudRoutes[resources.ConnectionInput, resources.Connection]{
		path: "/connections", one: "connection", many: "connections", fixed: []string{"org_id", "env_id", "source_id", "destination_id"},
		create: svc.CreateConnection, get: svc.GetConnection, update: svc.UpdateConnection, remove: svc.DeleteConnection,
		listQuery: []string{"status", "source_id", "destination_id"},
		list: func(r *http.Request, t domain.Tenant, pg resources.Page) ([]resources.Connection, resources.Page, error) {
			q := r.URL.Query()
			return svc.ListConnections(r.Context(), t, q.Get("source_id"), q.Get("destination_id"), q.Get("status"), pg)
		},
	})
}

func (a *API) registerDeliveryRoutes(r *mux.Router) {
	a.registerAttemptRoutes(r)
	a.registerTailRoutes(r) // before /events/{id}
	a.registerEventRoutes(r)
	a.registerReplayRoutes(r)
	a.registerCircuitRoutes(r)
	a.registerIssueRoutes(r)
}

func (a *API) ingest(w http.ResponseWriter, r *http.Request) {
	// The source first: an unknown one answers 404 before any upload is read.
	target, err := a.p.Service.LookupIngest(r.Context(), mux.Vars(r)["source_id"])
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	if err := a.p.Service.AdmitRate(target); err != nil {
		retryAfter(w, err)
		writeError(w, r, a.p.Log, err)
		return
	}
	limit := a.p.Service.MaxIngestBody()
	if r.ContentLength > limit {
		writeError(w, r, a.p.Log, domain.Errorf(domain.ETooLarge, "Payload too large (limit %d bytes)", limit))
		return
	}
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
	res, err := a.p.Service.Ingest(r.Context(), target, ingest.IngestRequest{
		Method: r.Method, Headers: r.Header, Query: r.URL.Query(), RawQuery: r.URL.RawQuery,
		Body: body, SourceIP: ip, RequestID: requestID(r),
	})
	if err != nil {
		retryAfter(w, err)
		writeError(w, r, a.p.Log, err)
		return
	}
	a.p.Metrics.CountIngestBytes(len(body))
	writeJSON(w, http.StatusOK, res)
}

// retryAfter sets Retry-After (whole seconds, at least 1) for a rate-limited webhook.
func retryAfter(w http.ResponseWriter, err error) {
	var rl *ingest.RateLimited
	if errors.As(err, &rl) {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(rl.Wait.Seconds())))))
	}
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

// listPage reads a configuration list's limit (1-100, default 100) and
// cursor (the previous page's), refusing parameters the list does not know.
func listPage(q url.Values, filters []string) (resources.Page, error) {
	pg := resources.Page{Limit: 100, After: q.Get("cursor")}
	if err := knownQuery(q, append([]string{"limit", "cursor"}, filters...)...); err != nil {
		return pg, err
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return pg, domain.Errorf(domain.EInvalid, "Invalid query: 'limit' must be an integer from 1 to 100")
		}
		pg.Limit = n
	}
	if len(pg.After) > 64 || strings.ContainsFunc(pg.After, func(r rune) bool { return !strings.ContainsRune("0123456789abcdef", r) }) {
		return pg, domain.Errorf(domain.EInvalid, "Invalid query: 'cursor' is not a cursor this API returned")
	}
	return pg, nil
}

// knownQuery refuses a query parameter the endpoint does not know, naming
// it: a misspelt filter must not silently return everything.
func knownQuery(q url.Values, known ...string) error {
	var unknown []string
	for k := range q {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	return domain.Errorf(domain.EInvalid, "Invalid query: unknown parameter '%s' (known: %s)", unknown[0], strings.Join(known, ", "))
}

// enumParam refuses a value outside allowed ("" is no filter).
func enumParam(name, v string, allowed ...string) error {
	if v == "" || slices.Contains(allowed, v) {
		return nil
	}
	return domain.Errorf(domain.EInvalid, "Invalid query: '%s' must be one of %s", name, strings.Join(allowed, ", "))
}

// flagParam reads a query flag given as 0/1 (as responses show flags) or
// true/false; nil when absent.
func flagParam(name, v string) (*int, error) {
	var n int
	switch strings.ToLower(v) {
	case "":
		return nil, nil
	case "1", "true":
		n = 1
	case "0", "false":
		n = 0
	default:
		return nil, domain.Errorf(domain.EInvalid, "Invalid query: '%s' must be 0, 1, true or false", name)
	}
	return &n, nil
}

// cursorParams reads a keyset position: cursor (one the same list
// returned) and direction, next (older rows, the default) or prev (newer).
// A cursor with an offset is refused: the cursor replaces it.
func cursorParams(q url.Values, kind string) (*projections.Cursor, bool, error) {
	dir := q.Get("direction")
	if err := enumParam("direction", dir, "next", "prev"); err != nil {
		return nil, false, err
	}
	if q.Get("cursor") == "" {
		if dir != "" {
			return nil, false, domain.Errorf(domain.EInvalid, "Invalid query: 'direction' needs a 'cursor'")
		}
		return nil, false, nil
	}
	if q.Get("offset") != "" {
		return nil, false, domain.Errorf(domain.EInvalid, "Invalid query: use 'cursor' or 'offset', not both")
	}
	c, err := projections.DecodeCursor(kind, q.Get("cursor"))
	if err != nil {
		return nil, false, err
	}
	return &c, dir == "prev", nil
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

// respondRaw writes v unwrapped with 200, or the error.
func (a *API) respondRaw(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *API) deleted(w http.ResponseWriter, r *http.Request, err error) {
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}
