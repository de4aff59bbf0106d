-- Secrets at rest, API key management and sessions.
SET LOCAL lock_timeout = '10s';

-- A destination's credentials (URL userinfo, credential headers, signing
-- secrets), AES-256-GCM sealed by the application (hsenc:v1:<key id>:...).
-- url, headers and signing_config keep only masked values from now on;
-- sources.verification_secret holds a ciphertext of the same form.
ALTER TABLE destinations ADD COLUMN secrets text;

-- Keys: usage is counted in memory and written at most once a minute.
ALTER TABLE api_keys
    ADD COLUMN request_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN scopes        text;
CREATE INDEX api_keys_env_idx ON api_keys (org_id, env_id, created_at DESC);

-- A session is created from an API key (login) or by the CLI; revoking the
-- key ends the sessions made from it.
ALTER TABLE sessions
    ADD COLUMN id          text,
    ADD COLUMN api_key_id  text REFERENCES api_keys (id) ON DELETE CASCADE,
    ADD COLUMN created_by  text NOT NULL DEFAULT 'login';
CREATE INDEX sessions_api_key_idx ON sessions (api_key_id) WHERE api_key_id IS NOT NULL;
CREATE INDEX sessions_expiry_idx ON sessions (expires_at);
