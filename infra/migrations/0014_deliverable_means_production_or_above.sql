-- Deliverable means Production or above: a tier may be deliverable only when it ranks at or above
-- the built-in `production` (sort_order), and the built-in `draft` and `preview` never. One
-- definition, `deliverable_tier`, for the delivery rule (shared.domain.delivery), the tiers
-- service's check and the database's backstops.
CREATE FUNCTION deliverable_tier(t resolution_tiers) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT t.is_deliverable AND t.name NOT IN ('draft', 'preview')
       AND t.sort_order >= (SELECT p.sort_order FROM resolution_tiers p WHERE p.name = 'production')
$$;

-- An upgrade leaves the rule in force: what was made deliverable below Production is not any more.
UPDATE resolution_tiers t SET is_deliverable = false WHERE t.is_deliverable AND NOT deliverable_tier(t);

-- Checked at commit, so that a transaction may re-order several tiers in several statements.
CREATE FUNCTION resolution_tiers_deliverable_rank() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    offending TEXT;
BEGIN
    SELECT string_agg(t.name, ', ' ORDER BY t.sort_order) INTO offending
    FROM resolution_tiers t WHERE t.is_deliverable AND NOT deliverable_tier(t);
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'tier(s) % cannot be deliverable: only production and tiers ranked at or above it are delivered',
            offending USING ERRCODE = 'check_violation', CONSTRAINT = 'resolution_tiers_deliverable_rank';
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER resolution_tiers_deliverable_rank
    AFTER INSERT OR UPDATE ON resolution_tiers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION resolution_tiers_deliverable_rank();

-- The delivery backstop uses the same definition.
CREATE OR REPLACE FUNCTION deliveries_only_deliverable_scenes() RETURNS trigger
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
    WHERE ds.delivery_id = target AND (NOT deliverable_tier(t) OR s.status NOT IN ('generated', 'approved'))
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
