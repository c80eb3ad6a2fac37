-- Events a function failed to apply for a reason that may pass (S3 503, a throttled API, a
-- deadlock): retried with growing pauses for TIERFLOW_TRANSIENT_RETRY_SECONDS after the first
-- failure, and only then dead-lettered. One row per function and received message (`ref`:
-- "<topic>-<partition>-<offset>" on Kafka and Lambda, "outbox-<id>" on the embedded bus), in the
-- database so that a restart neither forgets how long an event has been failing nor starts over.
CREATE TABLE event_failures (
    consumer TEXT NOT NULL,
    ref TEXT NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    tries INTEGER NOT NULL DEFAULT 1 CHECK (tries > 0),
    last_error TEXT NOT NULL,
    retry_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, ref)
);

-- A delivery still `requested` after TIERFLOW_DELIVERY_REDRIVE_SECONDS is asked for again (its
-- event was lost or dead-lettered); after a few re-drives it is rejected with the reason.
ALTER TABLE deliveries ADD COLUMN redriven INTEGER NOT NULL DEFAULT 0 CHECK (redriven >= 0);
CREATE INDEX idx_deliveries_requested ON deliveries(created_at) WHERE status = 'requested';
