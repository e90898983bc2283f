-- The servers of a deployment on one datastore: each says where agents reach it
-- (advertise_url) and where the other servers reach it (peer_url), and refreshes seen_at while
-- it runs. The active server (the one holding the write lock) marks its own row active and every
-- other not; the others relay their connections to it. Holds no deployment state.
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    advertise_url TEXT NOT NULL,
    peer_url TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0
);
