-- One-time login links for the dashboard (hookstream login-link): the token
-- is stored only as its SHA-256, redeemed once (the row is deleted) before
-- it expires, for a session of the link's environment.
CREATE TABLE login_links (
    token_hash bytea       PRIMARY KEY,
    id         text        NOT NULL,
    org_id     text        NOT NULL,
    env_id     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    created_by text        NOT NULL
);
CREATE INDEX login_links_expiry_idx ON login_links (expires_at);
