-- What each generation attempt really cost, not only its render: which worker ran it, how long
-- loading the pipeline took (0 when it was loaded already), how long the worker held its device
-- for it (from taking the job to its result, loading, encoding and uploading included) and how
-- many samples one pipeline call rendered together.
ALTER TABLE generation_jobs
    ADD COLUMN worker_id TEXT CHECK (worker_id <> ''),
    ADD COLUMN load_seconds DOUBLE PRECISION CHECK (load_seconds >= 0),
    ADD COLUMN held_seconds DOUBLE PRECISION CHECK (held_seconds >= 0),
    ADD COLUMN batch_size INTEGER CHECK (batch_size >= 1);
