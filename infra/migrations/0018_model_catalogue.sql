-- The model catalogue: jobs name a model an admin added, pinned when it was added, so that the
-- identical recipe at upscale time runs the identical weights (shared.domain.catalogue).
-- `source` is a diffusers pipeline directory (as workers see it) or a Hugging Face Hub id; `pin`
-- is the hub commit the revision resolved to, or "sha256:…" over the directory's files.
CREATE TABLE models (
    name TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    source TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 500),
    revision TEXT CHECK (length(revision) BETWEEN 1 AND 200),
    pin TEXT NOT NULL CHECK (pin ~ '^(sha256:[0-9a-f]{64}|[0-9a-f]{40})$'),
    added_by TEXT,
    added_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The pin of the segment's model when it was submitted; NULL for segments made before the
-- catalogue (their `model` is the directory or hub id itself).
ALTER TABLE segments ADD COLUMN model_pin TEXT;
