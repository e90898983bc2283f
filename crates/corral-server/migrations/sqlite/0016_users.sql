-- Users and their roles. A user logs in with a password (argon2id, PHC string; never stored in
-- clear) and holds API keys (SHA-256 hashes, as before); `admin` users may do everything, the
-- others what their role in each environment allows (memberships). Failed logins lock an
-- account for a while (`locked_until`, Unix seconds).
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    password_hash TEXT,
    admin         INTEGER NOT NULL DEFAULT 0,
    -- local | ldap (a directory user: no password here; roles from their groups at each login)
    source        TEXT NOT NULL DEFAULT 'local',
    created_at    INTEGER NOT NULL,
    removed_at    INTEGER,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER
);
CREATE UNIQUE INDEX users_live_name ON users(name) WHERE removed_at IS NULL;

-- owner | member | restricted | read-only
CREATE TABLE memberships (
    user_id        TEXT NOT NULL REFERENCES users(id),
    environment_id TEXT NOT NULL REFERENCES environments(id),
    role           TEXT NOT NULL,
    PRIMARY KEY (user_id, environment_id)
);

ALTER TABLE api_keys ADD COLUMN user_id TEXT REFERENCES users(id);
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
CREATE INDEX api_keys_user ON api_keys(user_id);

-- The first admin: the bootstrap key (admin.env) is theirs.
INSERT INTO users (id, name, admin, created_at)
VALUES ('user-admin', 'admin', 1, CAST(strftime('%s', 'now') AS INTEGER));
UPDATE api_keys SET user_id = 'user-admin' WHERE user_id IS NULL;
