-- corral's datastore. Secrets are never stored: only SHA-256 hashes of 256-bit random values.
CREATE TABLE environments (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE registration_tokens (
    id             TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    secret_hash    BLOB NOT NULL UNIQUE,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    max_uses       INTEGER,
    uses           INTEGER NOT NULL DEFAULT 0,
    revoked_at     INTEGER
);

CREATE TABLE hosts (
    id              TEXT PRIMARY KEY,
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    name            TEXT NOT NULL,
    labels          TEXT NOT NULL,
    credential_hash BLOB NOT NULL UNIQUE,
    token_id        TEXT,
    hostname        TEXT NOT NULL,
    agent_version   TEXT NOT NULL,
    os              TEXT NOT NULL,
    kernel          TEXT NOT NULL,
    arch            TEXT NOT NULL,
    remote_addr     TEXT NOT NULL,
    registered_at   INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL,
    -- A removed host keeps its row (a tombstone) so its agent can be told why it is refused.
    removed_at      INTEGER
);
CREATE UNIQUE INDEX hosts_live_name ON hosts(environment_id, name) WHERE removed_at IS NULL;

-- Security-relevant events: registrations, removals, refused credentials, superseded tunnels.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    host_id  TEXT,
    message  TEXT NOT NULL
);
CREATE INDEX events_at ON events(at);
