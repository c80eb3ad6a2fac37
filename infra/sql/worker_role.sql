-- The database role GPU workers connect as: it can touch only what a worker writes.
--
-- A worker claims and renews jobs, writes its result and what follows from it in one transaction
-- (the job, its segment and scene, the outbox events), queues the next attempt of a job it saw
-- fail (the lease sweep), and keeps its row in the register (forgetting rows of workers gone a
-- week). It reads what a job needs. It deletes nothing else, and it cannot touch tiers, projects,
-- deliveries, sessions, the dead letters or the record of applied events.
--
-- Run it as the schema's owner after `tierflow db migrate` (again after each upgrade: grants are
-- per table), then give each worker a login of its own in this role, for example
--   psql "$TIERFLOW_DATABASE_URL" -v ON_ERROR_STOP=1 -f infra/sql/worker_role.sql
--   CREATE ROLE gpu_node_7 LOGIN PASSWORD '…' IN ROLE tierflow_worker;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tierflow_worker') THEN
        CREATE ROLE tierflow_worker NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM tierflow_worker;
GRANT USAGE ON SCHEMA public TO tierflow_worker;
GRANT SELECT ON schema_migrations, resolution_tiers, projects, scenes, segments, generation_jobs, workers, models
    TO tierflow_worker;
GRANT INSERT, UPDATE ON generation_jobs, workers TO tierflow_worker;
GRANT DELETE ON workers TO tierflow_worker;
GRANT UPDATE ON scenes, segments TO tierflow_worker;
GRANT SELECT, INSERT ON outbox TO tierflow_worker;  -- SELECT: a retried write looks for its own event id
GRANT USAGE ON SEQUENCE generation_jobs_id_seq, outbox_id_seq TO tierflow_worker;
