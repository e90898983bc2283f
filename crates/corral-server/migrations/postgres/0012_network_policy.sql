-- Network policy: per environment every applied version of the document (generation 1, 2, …)
-- for `show`, `diff` and `rollback`; the services' labels, which its rules select on (not
-- secret: they are shown by `ps` and travel to every host in the name table); and a change
-- counter the overlay sync reads to push a new generation to the hosts.
CREATE TABLE network_policies (
    environment_id TEXT NOT NULL REFERENCES environments(id),
    generation     BIGINT NOT NULL,
    -- The document as applied (YAML), and its checked form (JSON) the hosts enforce.
    document       TEXT NOT NULL,
    policy         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (environment_id, generation)
);

-- JSON object: the Compose `labels:` of the service, corral's own (io.corral.*) left out.
ALTER TABLE services ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- A stack's own rules (`x-corral: policy:`), confined to the stack (JSON), or NULL.
ALTER TABLE stacks ADD COLUMN policy TEXT;

ALTER TABLE change_counters ADD COLUMN policy BIGINT NOT NULL DEFAULT 0;

-- Counts one change to the network policy of the row's environment.
CREATE FUNCTION counters_policy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE change_counters SET policy = policy + 1 WHERE environment_id = OLD.environment_id;
    ELSE
        UPDATE change_counters SET policy = policy + 1 WHERE environment_id = NEW.environment_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_stack_policy_new AFTER INSERT ON stacks
FOR EACH ROW WHEN (NEW.policy IS NOT NULL) EXECUTE FUNCTION counters_policy();
CREATE TRIGGER counters_stack_policy_changed AFTER UPDATE ON stacks
FOR EACH ROW WHEN (OLD.policy IS DISTINCT FROM NEW.policy) EXECUTE FUNCTION counters_policy();
CREATE TRIGGER counters_stack_policy_gone AFTER DELETE ON stacks
FOR EACH ROW WHEN (OLD.policy IS NOT NULL) EXECUTE FUNCTION counters_policy();
CREATE TRIGGER counters_policy_new AFTER INSERT ON network_policies
FOR EACH ROW EXECUTE FUNCTION counters_policy();
CREATE TRIGGER counters_policy_gone AFTER DELETE ON network_policies
FOR EACH ROW EXECUTE FUNCTION counters_policy();

-- A service's labels are part of the names the sync sends.
CREATE FUNCTION counters_service_labels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE change_counters SET names = names + 1
    WHERE environment_id = (SELECT environment_id FROM stacks WHERE id = NEW.stack_id);
    RETURN NULL;
END $$;
CREATE TRIGGER counters_service_labels AFTER UPDATE ON services
FOR EACH ROW WHEN (OLD.labels IS DISTINCT FROM NEW.labels)
EXECUTE FUNCTION counters_service_labels();
