package domain

// Tenant is who a request acts for: one organization and one environment.
type Tenant struct {
	OrgID string
	EnvID string
	Actor string // "api_key:<id>" or "session:<id>"
	// KeyID is the API key that authenticated the request ("" for a session).
	KeyID string
	// SessionID is the session of a cookie-authenticated request.
	SessionID string
	// SessionFromKey is set for a session made by logging in with an API
	// key: it may do what the key may, and no more.
	SessionFromKey bool
	// CSRF is the session's anti-CSRF token (tenancy.CSRFToken); a
	// cookie-authenticated write must send it.
	CSRF string
}
