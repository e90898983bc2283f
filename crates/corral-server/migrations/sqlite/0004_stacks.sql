-- Stacks deployed from Compose files: the desired state of each service, and which containers
-- belong to which replica slot.
CREATE TABLE stacks (
    id             TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    name           TEXT NOT NULL,
    -- active | removing (`corral down`: containers go first, then the stack row)
    state          TEXT NOT NULL DEFAULT 'active',
    -- `down --volumes`: also remove the stack's named volumes
    remove_volumes INTEGER NOT NULL DEFAULT 0,
    -- Docker names of the stack's named volumes (JSON array)
    volumes        TEXT NOT NULL DEFAULT '[]',
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX stacks_name ON stacks(environment_id, name);

CREATE TABLE services (
    stack_id  TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    -- the service definition (JSON), without its replica count
    spec      TEXT NOT NULL,
    -- SHA-256 of `spec`: a container made from another definition is outdated
    spec_hash TEXT NOT NULL,
    replicas  INTEGER NOT NULL,
    -- position in the start order (depends_on)
    position  INTEGER NOT NULL,
    PRIMARY KEY (stack_id, name)
);

ALTER TABLE containers ADD COLUMN stack_id TEXT REFERENCES stacks(id);
ALTER TABLE containers ADD COLUMN service TEXT;
ALTER TABLE containers ADD COLUMN slot INTEGER;
ALTER TABLE containers ADD COLUMN spec_hash TEXT;
ALTER TABLE containers ADD COLUMN health TEXT;
ALTER TABLE containers ADD COLUMN restart_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX containers_stack ON containers(stack_id);
