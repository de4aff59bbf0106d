package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// destSecrets are the parts of a destination that are credentials: kept
// only encrypted (destinations.secrets), never in the event log or in the
// columns the API and the read models show.
type destSecrets struct {
	URL            string            `json:"url,omitempty"`     // the URL with its userinfo, when it has one
	Headers        map[string]string `json:"headers,omitempty"` // credential headers' real values
	SigningSecret  string            `json:"signing_secret,omitempty"`
	PreviousSecret string            `json:"previous_secret,omitempty"`
}

func (d destSecrets) empty() bool {
	return d.URL == "" && len(d.Headers) == 0 && d.SigningSecret == "" && d.PreviousSecret == ""
}

// errNoEncryptionKey refuses to store a secret on a server without a key.
var errNoEncryptionKey = domain.Errorf(domain.EInvalid,
	"Secrets cannot be stored: this server has no encryption key (HOOKSTREAM_ENCRYPTION_KEY); its operator must configure one")

// sealDest encrypts a destination's secrets, bound to its id; "" when it has none.
func sealDest(kr *secretbox.Keyring, id string, sec destSecrets) (string, error) {
	if sec.empty() {
		return "", nil
	}
	raw, err := json.Marshal(sec)
	if err != nil {
		return "", fmt.Errorf("encode destination secrets: %w", err)
	}
	out, err := kr.Seal(raw, "destination:"+id)
	if errors.Is(err, secretbox.ErrNoKey) {
		return "", errNoEncryptionKey
	}
	return out, err
}

// openDest decrypts what sealDest made ("" opens to no secrets).
func openDest(kr *secretbox.Keyring, id, sealed string) (destSecrets, error) {
	var sec destSecrets
	if sealed == "" {
		return sec, nil
	}
	raw, err := kr.Open(sealed, "destination:"+id)
	if err != nil {
		return sec, fmt.Errorf("destination %s secrets: %w", id, err)
	}
	if err := json.Unmarshal(raw, &sec); err != nil {
		return sec, fmt.Errorf("destination %s secrets: %w", id, err)
	}
	return sec, nil
}

// sealSourceSecret encrypts a source's verification secret, bound to its id.
func sealSourceSecret(kr *secretbox.Keyring, id, secret string) (string, error) {
	if secret == "" {
		return "", nil
	}
	out, err := kr.Seal([]byte(secret), "source:"+id)
	if errors.Is(err, secretbox.ErrNoKey) {
		return "", errNoEncryptionKey
	}
	return out, err
}

// openSourceSecret decrypts a stored verification secret. A value that is
// not a ciphertext is a row from before encryption: it is returned as it is
// (SealPlaintext encrypts such rows at start).
func openSourceSecret(kr *secretbox.Keyring, id, stored string) (string, error) {
	if stored == "" || !secretbox.IsSealed(stored) {
		return stored, nil
	}
	raw, err := kr.Open(stored, "source:"+id)
	if err != nil {
		return "", fmt.Errorf("source %s verification secret: %w", id, err)
	}
	return string(raw), nil
}

// credentialHeader reports whether a destination header carries a
// credential: the standard ones, and any name that says so.
func credentialHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "authorization", "proxy-authorization", "cookie", "x-api-key":
		return true
	}
	for _, w := range []string{"token", "secret", "key", "password", "passwd", "credential", "session", "auth"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// maskedURL is a URL as the API, the event log and attempts show it: any
// userinfo replaced by ****.
func maskedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	shown := u.String() // scheme://host/...
	i := strings.Index(shown, "://")
	return shown[:i+3] + "****@" + shown[i+3:]
}

// origin is a URL's scheme and host (with port), lowercased; "" for none.
func origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	return strings.ToLower(u.Scheme + "://" + u.Host)
}

// splitSecrets separates a destination's configuration into what is shown
// (masked URL and header values) and what is sealed.
func splitSecrets(st destState) (shownURL string, shownHeaders map[string]string, sec destSecrets) {
	shownURL = maskedURL(st.URL)
	if shownURL != st.URL {
		sec.URL = st.URL
	}
	shownHeaders = make(map[string]string, len(st.Headers))
	for k, v := range st.Headers {
		if credentialHeader(k) {
			if sec.Headers == nil {
				sec.Headers = map[string]string{}
			}
			sec.Headers[k] = v
			shownHeaders[k] = *maskSecret(v)
			if v == "" {
				shownHeaders[k] = ""
			}
			continue
		}
		shownHeaders[k] = v
	}
	if st.Signing != nil {
		sec.SigningSecret = st.Signing.Secret
	}
	sec.PreviousSecret = st.PrevSecret
	return shownURL, shownHeaders, sec
}

// mergeSecrets puts opened secrets back into a destination's state.
func mergeSecrets(st *destState, sec destSecrets) {
	if sec.URL != "" {
		st.URL = sec.URL
	}
	for k, v := range sec.Headers {
		if st.Headers == nil {
			st.Headers = map[string]string{}
		}
		st.Headers[k] = v
	}
	if st.Signing != nil && sec.SigningSecret != "" {
		st.Signing.Secret = sec.SigningSecret
	}
	if sec.PreviousSecret != "" {
		st.PrevSecret = sec.PreviousSecret
	}
}

// isMaskOf reports whether v is what the API showed for secret: a client
// that sends back the object it read keeps the secret it cannot see.
func isMaskOf(v, secret string) bool {
	m := maskSecret(secret)
	return secret != "" && m != nil && v == *m
}

// SecretsReport says what SealPlaintext or RotateSecrets changed.
type SecretsReport struct {
	Sources      int `json:"sources"`
	Destinations int `json:"destinations"`
}

// SealPlaintext encrypts secrets stored before encryption existed: source
// verification secrets and destinations whose credentials sit in plaintext
// columns (signing secrets, credential headers, URL userinfo). It is
// idempotent and runs at start; without a key it changes nothing and
// returns ErrNoKey when there is something to encrypt.
func SealPlaintext(ctx context.Context, pool *pgxpool.Pool, kr *secretbox.Keyring) (SecretsReport, error) {
	var rep SecretsReport
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, verification_secret FROM sources
			WHERE verification_secret IS NOT NULL AND verification_secret NOT LIKE 'hsenc:%' FOR UPDATE`)
		if err != nil {
			return err
		}
		type pair struct{ id, v string }
		var srcs []pair
		for rows.Next() {
			var p pair
			if err := rows.Scan(&p.id, &p.v); err != nil {
				rows.Close()
				return err
			}
			srcs = append(srcs, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, p := range srcs {
			sealed, err := sealSourceSecret(kr, p.id, p.v)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE sources SET verification_secret = $2 WHERE id = $1`, p.id, sealed); err != nil {
				return err
			}
			rep.Sources++
		}
		// Destinations from before: secrets column empty, credentials in the open.
		drows, err := tx.Query(ctx, `SELECT `+destCols+` FROM destinations WHERE secrets IS NULL
			AND (signing_config->>'secret' NOT LIKE '****%' OR signing_previous_secret IS NOT NULL OR url ~ '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@'
			     OR EXISTS (SELECT 1 FROM jsonb_each_text(headers) h WHERE h.value NOT LIKE '****%' AND h.value <> ''
			                AND lower(h.key) ~ '(authorization|cookie|x-api-key|token|secret|key|password|passwd|credential|session|auth)'))
			FOR UPDATE`)
		if err != nil {
			return err
		}
		var dests []destState
		var ids []string
		for drows.Next() {
			d, st, err := scanDestination(drows)
			if err != nil {
				drows.Close()
				return err
			}
			dests, ids = append(dests, st), append(ids, d.ID)
		}
		drows.Close()
		if err := drows.Err(); err != nil {
			return err
		}
		for i, st := range dests {
			if err := storeDestSecrets(ctx, tx, kr, ids[i], st); err != nil {
				return err
			}
			rep.Destinations++
		}
		return nil
	})
	return rep, err
}

// storeDestSecrets rewrites one destination's secret-bearing columns from
// its full state: masked columns, sealed secrets.
func storeDestSecrets(ctx context.Context, tx pgx.Tx, kr *secretbox.Keyring, id string, st destState) error {
	shownURL, shownHeaders, sec := splitSecrets(st)
	sealed, err := sealDest(kr, id, sec)
	if err != nil {
		return err
	}
	headers, err := json.Marshal(shownHeaders)
	if err != nil {
		return err
	}
	signing, err := st.Signing.stored()
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE destinations SET url = $2, headers = $3, signing_config = $4, signing_previous_secret = NULL,
		secrets = NULLIF($5, '') WHERE id = $1`, id, shownURL, headers, signing, sealed)
	return err
}

// RotateSecrets re-encrypts every stored secret under the keyring's primary
// key, in one transaction. Run it after putting the new key first in
// HOOKSTREAM_ENCRYPTION_KEY (old keys after it) on every process; then the
// old keys can be removed.
func RotateSecrets(ctx context.Context, pool *pgxpool.Pool, kr *secretbox.Keyring) (SecretsReport, error) {
	var rep SecretsReport
	if !kr.Enabled() {
		return rep, secretbox.ErrNoKey
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, t := range []struct {
			table, col, aad string
			n               *int
		}{{"sources", "verification_secret", "source:", &rep.Sources}, {"destinations", "secrets", "destination:", &rep.Destinations}} {
			rows, err := tx.Query(ctx, `SELECT id, `+t.col+` FROM `+t.table+` WHERE `+t.col+` LIKE 'hsenc:%' AND `+t.col+` NOT LIKE $1 FOR UPDATE`,
				secretbox.Prefix+kr.PrimaryID()+":%")
			if err != nil {
				return err
			}
			var ids, vals []string
			for rows.Next() {
				var id, v string
				if err := rows.Scan(&id, &v); err != nil {
					rows.Close()
					return err
				}
				ids, vals = append(ids, id), append(vals, v)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			for i, id := range ids {
				plain, err := kr.Open(vals[i], t.aad+id)
				if err != nil {
					return fmt.Errorf("%s %s: %w", strings.TrimSuffix(t.table, "s"), id, err)
				}
				sealed, err := kr.Seal(plain, t.aad+id)
				if err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE `+t.table+` SET `+t.col+` = $2 WHERE id = $1`, id, sealed); err != nil {
					return err
				}
				*t.n++
			}
		}
		return nil
	})
	return rep, err
}

// SecretKeyIDs counts stored ciphertexts by the id of the key that made
// them, so a process can refuse to start without the keys it needs.
func SecretKeyIDs(ctx context.Context, pool *pgxpool.Pool) (map[string]int, error) {
	rows, err := pool.Query(ctx, `SELECT split_part(v, ':', 3), count(*) FROM (
			SELECT verification_secret AS v FROM sources WHERE verification_secret LIKE 'hsenc:%'
			UNION ALL SELECT secrets FROM destinations WHERE secrets IS NOT NULL) s
		GROUP BY 1`)
	if err != nil {
		return nil, fmt.Errorf("count secrets by key: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// CheckKeys returns an error naming the keys stored secrets need that kr
// does not hold.
func CheckKeys(ctx context.Context, pool *pgxpool.Pool, kr *secretbox.Keyring) error {
	used, err := SecretKeyIDs(ctx, pool)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, id := range kr.IDs() {
		have[id] = true
	}
	var missing []string
	for id, n := range used {
		if !have[id] {
			missing = append(missing, fmt.Sprintf("%s (%d secrets)", id, n))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("stored secrets were encrypted under key(s) %s, which HOOKSTREAM_ENCRYPTION_KEY does not hold (configured: %v)",
			strings.Join(missing, ", "), kr.IDs())
	}
	return nil
}
