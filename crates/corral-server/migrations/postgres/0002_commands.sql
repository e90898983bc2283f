-- The durable command queue: work for an agent survives server restarts and disconnections.
CREATE TABLE commands (
    id          TEXT PRIMARY KEY,
    host_id     TEXT NOT NULL REFERENCES hosts(id),
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    -- pending → sent → acked | failed | expired
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    sent_at     BIGINT,
    finished_at BIGINT,
    result      TEXT
);
CREATE INDEX commands_host_open ON commands(host_id, state);
CREATE INDEX commands_deadline ON commands(state, deadline_at);
