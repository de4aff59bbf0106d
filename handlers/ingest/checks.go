package ingest

import (
	"strings"
	"time"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/handlers/resources"
	"github.com/hookstream/hookstream/handlers/secrets"
)

// credentialHeaders are request headers that carry a caller's credentials:
// a session cookie sent along with a top-level navigation to an ingest URL
// would otherwise be readable by the source's owner.
var credentialHeaders = []string{"Cookie", "Authorization", "Proxy-Authorization", "X-API-Key"}

// redactIngestHeaders returns h with credentials replaced by secrets.Redacted: the
// credential headers, and the source's signature header when it verifies
// with a secret. The input map is not changed.
func redactIngestHeaders(h map[string][]string, st resources.SourceState) map[string][]string {
	names := credentialHeaders
	if st.VerifyEnabled && st.VerifyHeader != "" && st.VerifyType != domain.VerifyStdWebhooks {
		names = append(names[:len(names):len(names)], st.VerifyHeader)
	}
	out := make(map[string][]string, len(h))
	for k, v := range h {
		secret := false
		for _, n := range names {
			if strings.EqualFold(k, n) {
				secret = true
				break
			}
		}
		if secret {
			v = []string{secrets.Redacted}
		}
		out[k] = v
	}
	return out
}

// verifySignature checks the webhook's signature over its raw body.
func verifySignature(st resources.SourceState, in IngestRequest, now time.Time) error {
	if st.VerifyType == domain.VerifyStdWebhooks {
		return domain.VerifyStandardWebhooks(st.VerifySecret, first(in.Headers, "webhook-id"), first(in.Headers, "webhook-timestamp"),
			first(in.Headers, "webhook-signature"), in.Body, now)
	}
	sig := first(in.Headers, st.VerifyHeader)
	if sig == "" {
		return domain.Errorf(domain.EUnauthorized, "Invalid signature: missing %s header", st.VerifyHeader)
	}
	if !domain.VerifyHMACSignature(st.VerifyType, st.VerifySecret, sig, in.Body) {
		return domain.Errorf(domain.EUnauthorized, "Invalid signature")
	}
	return nil
}

func first(h map[string][]string, key string) string {
	for k, v := range h {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}
