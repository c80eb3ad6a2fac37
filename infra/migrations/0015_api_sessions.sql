-- Web UI sign-ins: the cookie holds a random session id, never the API key; the database keeps
-- only its SHA-256, the key it signed in with and when it ends. Signing out deletes the row.
CREATE TABLE api_sessions (
    id_hash TEXT PRIMARY KEY,
    key_name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_api_sessions_expires_at ON api_sessions(expires_at);
