package resources

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookstream/hookstream/handlers/secrets"
	"github.com/hookstream/hookstream/internal/secretbox"
)

// splitSecrets separates a destination's configuration into what is shown
// (masked URL and header values) and what is sealed.
func splitSecrets(st destState) (shownURL string, shownHeaders map[string]string, sec secrets.Dest) {
	shownURL = secrets.MaskedURL(st.URL)
	if shownURL != st.URL {
		sec.URL = st.URL
	}
	shownHeaders = make(map[string]string, len(st.Headers))
	for k, v := range st.Headers {
		if secrets.CredentialHeader(k) {
			if sec.Headers == nil {
				sec.Headers = map[string]string{}
			}
			sec.Headers[k] = v
			shownHeaders[k] = *secrets.Mask(v)
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
func mergeSecrets(st *destState, sec secrets.Dest) {
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
			sealed, err := secrets.SealSource(kr, p.id, p.v)
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
	sealed, err := secrets.SealDest(kr, id, sec)
	if err != nil {
		return err
	}
	headers, err := json.Marshal(shownHeaders)
	if err != nil {
		return err
	}
	signing, err := st.Signing.Stored()
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
