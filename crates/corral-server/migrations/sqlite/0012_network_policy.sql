-- Network policy: per environment every applied version of the document (generation 1, 2, …)
-- for `show`, `diff` and `rollback`; the services' labels, which its rules select on (not
-- secret: they are shown by `ps` and travel to every host in the name table); and a change
-- counter the overlay sync reads to push a new generation to the hosts.
CREATE TABLE network_policies (
    environment_id TEXT NOT NULL REFERENCES environments(id),
    generation     INTEGER NOT NULL,
    -- The document as applied (YAML), and its checked form (JSON) the hosts enforce.
    document       TEXT NOT NULL,
    policy         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (environment_id, generation)
);

-- JSON object: the Compose `labels:` of the service, corral's own (io.corral.*) left out.
ALTER TABLE services ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- A stack's own rules (`x-corral: policy:`), confined to the stack (JSON), or NULL.
ALTER TABLE stacks ADD COLUMN policy TEXT;

ALTER TABLE change_counters ADD COLUMN policy INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER counters_stack_policy_new AFTER INSERT ON stacks
WHEN NEW.policy IS NOT NULL
BEGIN
    UPDATE change_counters SET policy = policy + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_stack_policy_changed AFTER UPDATE ON stacks
WHEN OLD.policy IS NOT NEW.policy
BEGIN
    UPDATE change_counters SET policy = policy + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_stack_policy_gone AFTER DELETE ON stacks
WHEN OLD.policy IS NOT NULL
BEGIN
    UPDATE change_counters SET policy = policy + 1 WHERE environment_id = OLD.environment_id;
END;

CREATE TRIGGER counters_policy_new AFTER INSERT ON network_policies BEGIN
    UPDATE change_counters SET policy = policy + 1 WHERE environment_id = NEW.environment_id;
END;
CREATE TRIGGER counters_policy_gone AFTER DELETE ON network_policies BEGIN
    UPDATE change_counters SET policy = policy + 1 WHERE environment_id = OLD.environment_id;
END;

-- A service's labels travel in the name table.
CREATE TRIGGER counters_service_labels AFTER UPDATE ON services
WHEN OLD.labels IS NOT NEW.labels
BEGIN
    UPDATE change_counters SET names = names + 1
    WHERE environment_id = (SELECT environment_id FROM stacks WHERE id = NEW.stack_id);
END;
