-- Outgoing webhooks (shared.domain.webhooks): endpoints a tracker registered, and one delivery row
-- per (endpoint, event) that the sender POSTs, retries with backoff and marks delivered. A row
-- is written in the transaction that applies the event, so an event is never lost while an
-- endpoint is down; the webhook-id a receiver de-duplicates by is the event's id.
CREATE TABLE webhook_endpoints (
    id BIGSERIAL PRIMARY KEY,
    url TEXT NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    event_types TEXT[] NOT NULL CHECK (cardinality(event_types) > 0),
    project_id BIGINT REFERENCES projects(id) ON DELETE CASCADE,  -- NULL: every project
    -- The Standard Webhooks signing secret, whsec_ + base64. Kept as is: signing needs it.
    secret TEXT NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    failing_since TIMESTAMPTZ,  -- the first failure since the last success
    disabled_at TIMESTAMPTZ,
    disabled_reason TEXT
);

CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    endpoint_id BIGINT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload JSONB NOT NULL,  -- the CloudEvent, sent in structured mode
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at TIMESTAMPTZ,
    last_status INTEGER,  -- the receiver's HTTP status of the last try (NULL: no answer)
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);

CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE delivered_at IS NULL;
