-- Projects own scenes; a scene is generated at one tier and may be re-generated from another scene.

CREATE TABLE projects (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(btrim(name)) > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE TRIGGER set_updated_at BEFORE UPDATE ON projects
    FOR EACH ROW EXECUTE FUNCTION trigger_set_updated_at();

CREATE TABLE scenes (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL CHECK (length(btrim(name)) > 0),
    -- Aspect ratio in lowest terms (16:9, 9:16, 239:100); the same at every tier.
    aspect_width SMALLINT NOT NULL CHECK (aspect_width > 0),
    aspect_height SMALLINT NOT NULL CHECK (aspect_height > 0),
    -- The generation size: the largest size of the aspect ratio inside the tier's box when the
    -- scene was created (kept, so resizing a tier later never changes what a scene was made at).
    width INTEGER NOT NULL CHECK (width BETWEEN 8 AND 8192 AND width % 8 = 0),
    height INTEGER NOT NULL CHECK (height BETWEEN 8 AND 8192 AND height % 8 = 0),
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'generating', 'generated', 'approved', 'failed')),
    -- Hash of everything that shapes the frames except the size; equal across tiers.
    recipe_hash TEXT,
    approved_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CHECK ((status = 'approved') = (approved_at IS NOT NULL))
);
CREATE TRIGGER set_updated_at BEFORE UPDATE ON scenes
    FOR EACH ROW EXECUTE FUNCTION trigger_set_updated_at();
CREATE INDEX idx_scenes_project_id ON scenes(project_id);

-- The seed's linkage, with the default taken from the tier marked default at insert time
-- instead of the seed's hard-coded id 1.
ALTER TABLE scenes
    ADD COLUMN resolution_tier_id BIGINT NOT NULL DEFAULT default_resolution_tier_id() REFERENCES resolution_tiers(id) ON DELETE RESTRICT ON UPDATE CASCADE,
    ADD COLUMN upscaled_from_scene_id BIGINT REFERENCES scenes(id) ON DELETE SET NULL ON UPDATE CASCADE;

CREATE INDEX idx_scenes_resolution_tier_id ON scenes(resolution_tier_id);
CREATE INDEX idx_scenes_upscaled_from_scene_id ON scenes(upscaled_from_scene_id);

ALTER TABLE scenes ADD CONSTRAINT scenes_not_upscaled_from_itself CHECK (upscaled_from_scene_id <> id);
