-- PostgreSQL form of sqlite/0008_change_counters.sql (same table, same counting rules; the
-- triggers call functions, as PostgreSQL's triggers do).
-- One row per environment counting changes to what the overlay sync sends its hosts: the
-- overlay (environment settings, hosts' keys, endpoints and leases) and the service names
-- (replicas' addresses and states). Writes that change nothing the sync sends do not count.
CREATE TABLE change_counters (
    environment_id TEXT PRIMARY KEY,
    overlay        BIGINT NOT NULL DEFAULT 0,
    names          BIGINT NOT NULL DEFAULT 0
);
INSERT INTO change_counters (environment_id) SELECT id FROM environments;

CREATE FUNCTION counters_environment_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_counters (environment_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_environment_new AFTER INSERT ON environments
FOR EACH ROW EXECUTE FUNCTION counters_environment_new();

CREATE FUNCTION counters_environment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_environment_changed AFTER UPDATE ON environments
FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
  OR OLD.overlay_mode IS DISTINCT FROM NEW.overlay_mode
  OR OLD.overlay_cidr IS DISTINCT FROM NEW.overlay_cidr
  OR OLD.overlay_psk IS DISTINCT FROM NEW.overlay_psk
  OR OLD.overlay_psk_generation IS DISTINCT FROM NEW.overlay_psk_generation)
EXECUTE FUNCTION counters_environment_changed();

-- Counts one change to the overlay of the row's environment (both, when a row moves).
CREATE FUNCTION counters_overlay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = NEW.environment_id;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE change_counters SET overlay = overlay + 1
        WHERE environment_id IN (OLD.environment_id, NEW.environment_id);
    ELSE
        UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = OLD.environment_id;
    END IF;
    RETURN NULL;
END $$;

-- Counts one change to the service names of the row's environment (both, when a row moves).
CREATE FUNCTION counters_names() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE change_counters SET names = names + 1 WHERE environment_id = NEW.environment_id;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE change_counters SET names = names + 1
        WHERE environment_id IN (OLD.environment_id, NEW.environment_id);
    ELSE
        UPDATE change_counters SET names = names + 1 WHERE environment_id = OLD.environment_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER counters_host_new AFTER INSERT ON hosts
FOR EACH ROW EXECUTE FUNCTION counters_overlay();
CREATE TRIGGER counters_host_changed AFTER UPDATE ON hosts
FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
  OR OLD.environment_id IS DISTINCT FROM NEW.environment_id
  OR OLD.overlay_public_key IS DISTINCT FROM NEW.overlay_public_key
  OR OLD.overlay_endpoint IS DISTINCT FROM NEW.overlay_endpoint
  OR OLD.removed_at IS DISTINCT FROM NEW.removed_at)
EXECUTE FUNCTION counters_overlay();
CREATE TRIGGER counters_host_gone AFTER DELETE ON hosts
FOR EACH ROW EXECUTE FUNCTION counters_overlay();

CREATE TRIGGER counters_lease_new AFTER INSERT ON overlay_leases
FOR EACH ROW EXECUTE FUNCTION counters_overlay();
CREATE TRIGGER counters_lease_changed AFTER UPDATE ON overlay_leases
FOR EACH ROW EXECUTE FUNCTION counters_overlay();
CREATE TRIGGER counters_lease_gone AFTER DELETE ON overlay_leases
FOR EACH ROW EXECUTE FUNCTION counters_overlay();

CREATE TRIGGER counters_container_new AFTER INSERT ON containers
FOR EACH ROW EXECUTE FUNCTION counters_names();
CREATE TRIGGER counters_container_changed AFTER UPDATE ON containers
FOR EACH ROW WHEN (OLD.ip IS DISTINCT FROM NEW.ip OR OLD.desired IS DISTINCT FROM NEW.desired
  OR OLD.actual IS DISTINCT FROM NEW.actual OR OLD.health IS DISTINCT FROM NEW.health
  OR OLD.stack_id IS DISTINCT FROM NEW.stack_id OR OLD.service IS DISTINCT FROM NEW.service
  OR OLD.environment_id IS DISTINCT FROM NEW.environment_id)
EXECUTE FUNCTION counters_names();
CREATE TRIGGER counters_container_gone AFTER DELETE ON containers
FOR EACH ROW EXECUTE FUNCTION counters_names();

CREATE TRIGGER counters_stack_new AFTER INSERT ON stacks
FOR EACH ROW EXECUTE FUNCTION counters_names();
CREATE TRIGGER counters_stack_changed AFTER UPDATE ON stacks
FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
  OR OLD.environment_id IS DISTINCT FROM NEW.environment_id)
EXECUTE FUNCTION counters_names();
CREATE TRIGGER counters_stack_gone AFTER DELETE ON stacks
FOR EACH ROW EXECUTE FUNCTION counters_names();
