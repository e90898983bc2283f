-- Containers: desired state (what operators asked for) next to actual state (what the host's
-- agent last reported).
CREATE TABLE containers (
    id             TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    host_id        TEXT NOT NULL REFERENCES hosts(id),
    name           TEXT NOT NULL,
    image          TEXT NOT NULL,
    spec           TEXT NOT NULL,
    -- running | stopped
    desired        TEXT NOT NULL,
    -- pending (not yet reported) | a Docker state (created, running, exited, …) | missing
    actual         TEXT NOT NULL DEFAULT 'pending',
    docker_id      TEXT,
    exit_code      BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX containers_name ON containers(environment_id, name);
CREATE INDEX containers_host ON containers(host_id);
