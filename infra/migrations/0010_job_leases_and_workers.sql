-- Workers claim queued jobs from this table (one statement, FOR UPDATE SKIP LOCKED) and hold each
-- under a lease they renew while they work; a job whose lease ran out lost its worker. A retry
-- waits for `not_before` in the queue, not in a sleeping worker.
ALTER TABLE generation_jobs
    ADD COLUMN not_before TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN claimed_at TIMESTAMPTZ,
    ADD COLUMN heard_at TIMESTAMPTZ,
    -- NULL while queued, and once the worker wrote its result (nothing is left to lose).
    ADD COLUMN lease_expires_at TIMESTAMPTZ;
-- Jobs running when this migration runs were started without a lease: their leases end now, so
-- the lease sweeper gives them their next attempts instead of leaving them running for good.
UPDATE generation_jobs SET claimed_at = COALESCE(started_at, created_at), heard_at = updated_at,
                           lease_expires_at = now()
WHERE status = 'running';
CREATE INDEX idx_generation_jobs_queue ON generation_jobs(not_before, id) WHERE status = 'queued';
CREATE INDEX idx_generation_jobs_leases ON generation_jobs(lease_expires_at) WHERE status = 'running';

-- Wake waiting workers when a job becomes claimable: queued, or released back to the queue.
CREATE FUNCTION jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tierflow_jobs', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF status ON generation_jobs
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION jobs_notify();

-- Every `tierflow worker serve` process, alive or not: what it does now and what it has done.
CREATE TABLE workers (
    id TEXT PRIMARY KEY CHECK (id <> ''),
    host TEXT NOT NULL,
    pid INTEGER NOT NULL CHECK (pid > 0),
    device TEXT NOT NULL,
    concurrency INTEGER NOT NULL CHECK (concurrency >= 1),
    -- The models it claims jobs of; empty: any.
    models TEXT[] NOT NULL DEFAULT '{}',
    cached_models TEXT[] NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'busy', 'stopping', 'stopped')),
    job_ids BIGINT[] NOT NULL DEFAULT '{}',
    jobs_done INTEGER NOT NULL DEFAULT 0 CHECK (jobs_done >= 0),
    -- Slot-seconds: with --concurrency N a second of N busy slots is N busy seconds.
    busy_seconds DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (busy_seconds >= 0),
    idle_seconds DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (idle_seconds >= 0),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heard_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at TIMESTAMPTZ,
    CHECK ((state = 'stopped') = (stopped_at IS NOT NULL))
);
