-- The embedded bus: with no Kafka, the outbox relay hands each event to every function
-- subscribed to its type by writing one delivery row per function; a function applies a
-- delivery and deletes it in one transaction. Events a function gives up on are dead letters.

CREATE TABLE bus_deliveries (
    consumer TEXT NOT NULL,
    outbox_id BIGINT NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, outbox_id)
);

CREATE TABLE dead_letters (
    id BIGSERIAL PRIMARY KEY,
    consumer TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_key TEXT,
    -- The original bytes as received (they may not be valid JSON), and why they were refused.
    payload BYTEA NOT NULL,
    reason TEXT NOT NULL,
    -- Embedded bus only: the outbox event to deliver again on replay.
    outbox_id BIGINT REFERENCES outbox(id) ON DELETE SET NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    replayed_at TIMESTAMPTZ
);
CREATE INDEX idx_dead_letters_pending ON dead_letters(id) WHERE replayed_at IS NULL;

-- Progressive upscaling: approving a scene of this project requests its re-generation at this tier.
ALTER TABLE projects
    ADD COLUMN auto_upscale_to_tier_id BIGINT REFERENCES resolution_tiers(id) ON DELETE RESTRICT;
