-- What a stack ships to its containers: project files, configs and secrets, by the SHA-256
-- of their content. Every content is sealed under the master key (a config may hold as much
-- as a secret), bound to its stack and digest. Replaced with the stack's definition by every
-- `up`; gone with the stack.
CREATE TABLE stack_files (
    stack_id TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    digest   TEXT NOT NULL,
    secret   BIGINT NOT NULL,
    content  BYTEA NOT NULL,
    PRIMARY KEY (stack_id, digest)
);
