-- The live stream (GET /api/events) shows a scene's status as it changes: the handler that applies
-- an event changes it after the event was committed, so the event alone comes too early. One
-- notification per new scene and per change of status, delivered at commit, with the scene's id.
CREATE FUNCTION scene_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tierflow_scenes', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER scene_inserted_notify AFTER INSERT ON scenes
    FOR EACH ROW EXECUTE FUNCTION scene_notify();
CREATE TRIGGER scene_status_notify AFTER UPDATE OF status ON scenes
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION scene_notify();
