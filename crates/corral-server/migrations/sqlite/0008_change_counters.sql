-- One row per environment counting changes to what the overlay sync sends its hosts: the
-- overlay (environment settings, hosts' keys, endpoints and leases) and the service names
-- (replicas' addresses and states). Triggers keep them, so every write counts, whichever
-- code path makes it; the sync reads these few rows each second and does nothing more while
-- they stay the same. Writes that change nothing the sync sends (a heartbeat's last_seen_at,
-- an unchanged endpoint written again on reconnect) do not count.
CREATE TABLE change_counters (
    environment_id TEXT PRIMARY KEY,
    overlay        INTEGER NOT NULL DEFAULT 0,
    names          INTEGER NOT NULL DEFAULT 0
);
INSERT INTO change_counters (environment_id) SELECT id FROM environments;

CREATE TRIGGER counters_environment_new AFTER INSERT ON environments BEGIN
    INSERT INTO change_counters (environment_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
END;
CREATE TRIGGER counters_environment_changed AFTER UPDATE ON environments
WHEN OLD.name IS NOT NEW.name OR OLD.overlay_mode IS NOT NEW.overlay_mode
  OR OLD.overlay_cidr IS NOT NEW.overlay_cidr OR OLD.overlay_psk IS NOT NEW.overlay_psk
  OR OLD.overlay_psk_generation IS NOT NEW.overlay_psk_generation
BEGIN
    UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = NEW.id;
END;

CREATE TRIGGER counters_host_new AFTER INSERT ON hosts BEGIN
    UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_host_changed AFTER UPDATE ON hosts
WHEN OLD.name IS NOT NEW.name OR OLD.environment_id IS NOT NEW.environment_id
  OR OLD.overlay_public_key IS NOT NEW.overlay_public_key
  OR OLD.overlay_endpoint IS NOT NEW.overlay_endpoint OR OLD.removed_at IS NOT NEW.removed_at
BEGIN
    UPDATE change_counters SET overlay = overlay + 1
    WHERE environment_id IN (OLD.environment_id, NEW.environment_id);
END;
CREATE TRIGGER counters_host_gone AFTER DELETE ON hosts BEGIN
    UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = OLD.environment_id;
END;

CREATE TRIGGER counters_lease_new AFTER INSERT ON overlay_leases BEGIN
    UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_lease_changed AFTER UPDATE ON overlay_leases BEGIN
    UPDATE change_counters SET overlay = overlay + 1
    WHERE environment_id IN (OLD.environment_id, NEW.environment_id);
END;
CREATE TRIGGER counters_lease_gone AFTER DELETE ON overlay_leases BEGIN
    UPDATE change_counters SET overlay = overlay + 1 WHERE environment_id = OLD.environment_id;
END;

CREATE TRIGGER counters_container_new AFTER INSERT ON containers BEGIN
    UPDATE change_counters SET names = names + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_container_changed AFTER UPDATE ON containers
WHEN OLD.ip IS NOT NEW.ip OR OLD.desired IS NOT NEW.desired OR OLD.actual IS NOT NEW.actual
  OR OLD.health IS NOT NEW.health OR OLD.stack_id IS NOT NEW.stack_id
  OR OLD.service IS NOT NEW.service OR OLD.environment_id IS NOT NEW.environment_id
BEGIN
    UPDATE change_counters SET names = names + 1
    WHERE environment_id IN (OLD.environment_id, NEW.environment_id);
END;
CREATE TRIGGER counters_container_gone AFTER DELETE ON containers BEGIN
    UPDATE change_counters SET names = names + 1 WHERE environment_id = OLD.environment_id;
END;

CREATE TRIGGER counters_stack_new AFTER INSERT ON stacks BEGIN
    UPDATE change_counters SET names = names + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_stack_changed AFTER UPDATE ON stacks
WHEN OLD.name IS NOT NEW.name OR OLD.environment_id IS NOT NEW.environment_id
BEGIN
    UPDATE change_counters SET names = names + 1
    WHERE environment_id IN (OLD.environment_id, NEW.environment_id);
END;
CREATE TRIGGER counters_stack_gone AFTER DELETE ON stacks BEGIN
    UPDATE change_counters SET names = names + 1 WHERE environment_id = OLD.environment_id;
END;
