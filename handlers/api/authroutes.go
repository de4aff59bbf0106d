package api

import (
	"crypto/hmac"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/gorilla/mux"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/tenancy"
	"github.com/hookstream/hookstream/internal/kit"
)

// checkCSRF guards cookie-authenticated writes: a browser sends the cookie
// along with a cross-site form post, so a write must carry the session's
// CSRF token (X-CSRF-Token, which only a page of this origin can read from
// GET /v1/auth/session), a JSON body type (which a cross-site form cannot
// send without a CORS preflight) and must not come from another origin.
// Before a session exists (login) t is the zero Tenant: no token yet.
func checkCSRF(r *http.Request, t domain.Tenant) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if t.CSRF != "" && !hmac.Equal([]byte(r.Header.Get(tenancy.CSRFHeader)), []byte(t.CSRF)) {
		return domain.Errorf(domain.EForbidden, "A session-authenticated write must send the session's CSRF token in X-CSRF-Token (GET /v1/auth/session)")
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" {
		return domain.Errorf(domain.EForbidden, "Cross-site request refused")
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return domain.Errorf(domain.EForbidden, "Cross-origin request refused (Origin %s)", origin)
		}
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return domain.Errorf(domain.EForbidden, "A session-authenticated write must send Content-Type: application/json")
	}
	return nil
}

// requireSession refuses key management to an API key and to a session made
// from one: as in hookstream, keys are created and revoked by a user's
// session (the CLI's `sessions create`, or a Better Auth server sharing the
// cookie secret), so a leaked key can neither mint keys that outlive it nor
// revoke its owner's.
func requireSession(t domain.Tenant) error {
	if t.SessionID == "" || t.SessionFromKey {
		return domain.Errorf(domain.EForbidden, "API keys are created and revoked from a user's session (hookstream sessions create), not with an API key or a session made from one")
	}
	return nil
}

// LoginInput is the body of POST /v1/auth/login: an API key, or the token
// of a one-time login link (hookstream login-link).
type LoginInput struct {
	APIKey    *string `json:"api_key"`
	LinkToken *string `json:"link_token"`
}

func (a *API) setSessionCookie(w http.ResponseWriter, s tenancy.Session, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: tenancy.CookieName, Value: tenancy.SignCookie(a.p.CookieSecret, s.Token), Path: "/",
		MaxAge: maxAge, HttpOnly: true, Secure: a.p.SecureCookies, SameSite: http.SameSiteLaxMode})
}

func (a *API) registerAuthRoutes(r *mux.Router) {
	a.registerLoginRoutes(r)
	a.registerKeyRoutes(r)
	a.registerEnvironmentRoutes(r)
}

func (a *API) registerLoginRoutes(r *mux.Router) {
	acc := a.p.Accounts
	r.HandleFunc("/auth/login", func(w http.ResponseWriter, r *http.Request) {
		// A key in a header cannot come from a cross-site form; a key in the
		// body must come as JSON (CSRF: no logging a browser into another account).
		if r.Header.Get("X-API-Key") == "" && r.Header.Get("Authorization") == "" {
			if err := checkCSRF(r, domain.Tenant{}); err != nil {
				writeError(w, r, a.p.Log, err)
				return
			}
			var in LoginInput
			if !a.decode(w, r, &in) {
				return
			}
			if in.LinkToken != nil {
				if in.APIKey != nil {
					writeError(w, r, a.p.Log, kit.Invalidf("send 'api_key' or 'link_token', not both"))
					return
				}
				a.loginByLink(w, r, *in.LinkToken)
				return
			}
			if in.APIKey == nil || *in.APIKey == "" {
				writeError(w, r, a.p.Log, kit.Invalidf("'api_key' is required (or send the key in X-API-Key)"))
				return
			}
			r.Header.Set("X-API-Key", *in.APIKey)
		} else if r.ContentLength != 0 {
			// With the key in a header a body is optional, but one that is
			// sent is held to the same rules: no unknown fields, no second key.
			var in LoginInput
			if !a.decode(w, r, &in) {
				return
			}
			if in.APIKey != nil && *in.APIKey != r.Header.Get("X-API-Key") {
				writeError(w, r, a.p.Log, kit.Invalidf("'api_key' differs from the key in the request's headers: send one key"))
				return
			}
		}
		r.Header.Del("Cookie") // a login is by key only
		now := a.p.Now()
		t, err := tenancy.Authenticate(r.Context(), a.p.Pool, r, now, nil)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		s, err := acc.CreateSession(r.Context(), t.OrgID, t.EnvID, t.KeyID, t.Actor, tenancy.DefaultSessionTTL, now)
		if err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		a.setSessionCookie(w, s, int(tenancy.DefaultSessionTTL.Seconds()))
		writeJSON(w, http.StatusCreated, map[string]any{"session": s})
	}).Methods(http.MethodPost)
	r.HandleFunc("/auth/logout", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		if t.SessionID == "" {
			writeError(w, r, a.p.Log, domain.Errorf(domain.EInvalid, "Not a session: log out ends the session of the better-auth.session_token cookie"))
			return
		}
		if err := acc.EndSession(r.Context(), t, a.p.Now()); err != nil {
			writeError(w, r, a.p.Log, err)
			return
		}
		a.setSessionCookie(w, tenancy.Session{}, -1)
		writeJSON(w, http.StatusOK, map[string]bool{"success": true})
	})).Methods(http.MethodPost)
	r.HandleFunc("/auth/session", a.withAuth(func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		writeJSON(w, http.StatusOK, map[string]any{"org_id": t.OrgID, "env_id": t.EnvID, "session_id": kit.NullIfEmpty(t.SessionID), "api_key_id": kit.NullIfEmpty(t.KeyID),
			"csrf_token": kit.NullIfEmpty(t.CSRF)})
	})).Methods(http.MethodGet)
}

// loginByLink redeems a one-time login link for a session.
func (a *API) loginByLink(w http.ResponseWriter, r *http.Request, token string) {
	now := a.p.Now()
	s, err := a.p.Accounts.RedeemLoginLink(r.Context(), token, now)
	if err != nil {
		writeError(w, r, a.p.Log, err)
		return
	}
	a.setSessionCookie(w, s, int(tenancy.DefaultSessionTTL.Seconds()))
	writeJSON(w, http.StatusCreated, map[string]any{"session": s})
}
