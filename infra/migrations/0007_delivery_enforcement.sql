-- Delivery enforcement in the database itself: whatever code path writes it, a delivery cannot be
-- completed while it includes a scene whose tier is not deliverable (Draft, Preview) or that is
-- not fully generated.

-- What was asked for, including ids that turned out not to exist (delivery_scenes only holds
-- existing scenes).
ALTER TABLE deliveries ADD COLUMN requested_scene_ids BIGINT[] NOT NULL DEFAULT '{}';

CREATE FUNCTION deliveries_only_deliverable_scenes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- Fired from both tables; a record's fields are resolved when the function is planned, so
    -- the id is read through jsonb rather than NEW.id / NEW.delivery_id.
    target BIGINT := (to_jsonb(NEW) ->> CASE TG_TABLE_NAME WHEN 'deliveries' THEN 'id' ELSE 'delivery_id' END)::bigint;
    offending RECORD;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM deliveries WHERE id = target AND status = 'completed') THEN
        RETURN NULL;
    END IF;
    SELECT s.id, t.name AS tier, s.status INTO offending
    FROM delivery_scenes ds JOIN scenes s ON s.id = ds.scene_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
    WHERE ds.delivery_id = target AND (NOT t.is_deliverable OR s.status NOT IN ('generated', 'approved'))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delivery % cannot be completed: scene % is % at tier % (only deliverable, fully generated scenes ship)',
            target, offending.id, offending.status, offending.tier
            USING ERRCODE = 'check_violation', CONSTRAINT = 'deliveries_only_deliverable_scenes';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM delivery_scenes ds WHERE ds.delivery_id = target) THEN
        RAISE EXCEPTION 'delivery % cannot be completed without scenes', target
            USING ERRCODE = 'check_violation', CONSTRAINT = 'deliveries_only_deliverable_scenes';
    END IF;
    RETURN NULL;
END;
$$;

-- Deferred to commit, so a delivery and its scenes can be written in any order in one transaction.
CREATE CONSTRAINT TRIGGER deliveries_only_deliverable_scenes
    AFTER INSERT OR UPDATE ON deliveries DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION deliveries_only_deliverable_scenes();
CREATE CONSTRAINT TRIGGER delivery_scenes_only_deliverable_scenes
    AFTER INSERT OR UPDATE ON delivery_scenes DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION deliveries_only_deliverable_scenes();
