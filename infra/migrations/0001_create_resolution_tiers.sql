-- Resolution tiers: the seed task list's table and rows verbatim, then the rules Tierflow adds.

CREATE OR REPLACE FUNCTION trigger_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$;

CREATE TABLE resolution_tiers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    quality_settings JSONB,
    speed_factor DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    is_default BOOLEAN NOT NULL DEFAULT false,
    sort_order INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE TRIGGER set_updated_at BEFORE UPDATE ON resolution_tiers
    FOR EACH ROW EXECUTE FUNCTION trigger_set_updated_at();

INSERT INTO resolution_tiers (name, width, height, speed_factor, is_default, sort_order) VALUES
    ('draft', 512, 512, 5.0, true, 1),
    ('preview', 768, 768, 2.5, false, 2),
    ('production', 1920, 1080, 1.0, false, 3);

-- Delivery accepts deliverable tiers only; built-in: production alone.
-- Built-in tiers may be resized but never deleted or renamed.
ALTER TABLE resolution_tiers
    ADD COLUMN is_deliverable BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN is_builtin BOOLEAN NOT NULL DEFAULT false,
    ADD CONSTRAINT resolution_tiers_name_slug CHECK (name ~ '^[a-z][a-z0-9]*(-[a-z0-9]+)*$' AND length(name) <= 40),
    ADD CONSTRAINT resolution_tiers_width_valid CHECK (width BETWEEN 64 AND 8192 AND width % 8 = 0),
    ADD CONSTRAINT resolution_tiers_height_valid CHECK (height BETWEEN 64 AND 8192 AND height % 8 = 0),
    ADD CONSTRAINT resolution_tiers_speed_factor_positive CHECK (speed_factor > 0 AND speed_factor < 'Infinity'),
    ADD CONSTRAINT resolution_tiers_quality_settings_object
        CHECK (quality_settings IS NULL OR jsonb_typeof(quality_settings) = 'object');

UPDATE resolution_tiers SET is_builtin = true;
UPDATE resolution_tiers SET is_deliverable = true WHERE name = 'production';

-- At most one default tier (checked per row, at once) ...
CREATE UNIQUE INDEX resolution_tiers_one_default ON resolution_tiers (is_default) WHERE is_default;

-- ... and at least one (checked at commit, so a transaction may move the default from one tier
-- to another in two statements).
CREATE FUNCTION resolution_tiers_require_default() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM resolution_tiers WHERE is_default) THEN
        RAISE EXCEPTION 'there must be exactly one default resolution tier'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'resolution_tiers_require_default';
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER resolution_tiers_require_default
    AFTER INSERT OR UPDATE OR DELETE ON resolution_tiers
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION resolution_tiers_require_default();

-- Built-in tiers are referenced by name across the studio pipeline.
CREATE FUNCTION resolution_tiers_protect_builtin() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.is_builtin THEN
        RAISE EXCEPTION 'built-in tier "%" cannot be deleted', OLD.name
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'resolution_tiers_protect_builtin';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.is_builtin AND (NEW.name <> OLD.name OR NOT NEW.is_builtin) THEN
        RAISE EXCEPTION 'built-in tier "%" cannot be renamed', OLD.name
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'resolution_tiers_protect_builtin';
    END IF;
    IF TG_OP = 'INSERT' AND NEW.is_builtin THEN
        RAISE EXCEPTION 'only migrations create built-in tiers'
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'resolution_tiers_protect_builtin';
    END IF;
    RETURN COALESCE(NEW, OLD);
END;
$$;
CREATE TRIGGER resolution_tiers_protect_builtin
    BEFORE INSERT OR UPDATE OR DELETE ON resolution_tiers
    FOR EACH ROW EXECUTE FUNCTION resolution_tiers_protect_builtin();

-- The tier a new scene gets when none is named: whichever is default at insert time.
CREATE FUNCTION default_resolution_tier_id() RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT id FROM resolution_tiers WHERE is_default
$$;
