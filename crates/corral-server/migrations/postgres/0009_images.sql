-- Images: per environment the registries corral may pull from with an account (the password
-- or token sealed under the master key, bound to its row; never in clear) and a private CA,
-- and the admission policy, every applied version kept (generation 1, 2, …) for `show` and
-- rollback.
CREATE TABLE registries (
    environment_id TEXT NOT NULL REFERENCES environments(id),
    -- HOST[:PORT], as image references name it.
    registry       TEXT NOT NULL,
    username       TEXT,
    -- sealed: XChaCha20-Poly1305 under master.key, associated data registries/ENV/REGISTRY.
    secret         BYTEA,
    ca_pem         TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (environment_id, registry)
);

CREATE TABLE admission_policies (
    environment_id TEXT NOT NULL REFERENCES environments(id),
    generation     BIGINT NOT NULL,
    -- The document as applied (YAML), and its checked form (JSON) the server evaluates.
    document       TEXT NOT NULL,
    policy         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (environment_id, generation)
);
