-- The audit log: every state-changing API request, every refused one, and the server's own
-- security events, append-only and chained: `hash` is an HMAC (under a key derived from the
-- master key, which is not in this database) of the previous entry's hash and this entry's
-- fields (corral_control::audit). Never pruned: export it (`corral audit export`) to keep it
-- elsewhere.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    role        TEXT NOT NULL,
    environment TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    source      TEXT NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor, seq);
