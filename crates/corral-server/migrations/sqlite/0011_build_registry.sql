-- The registry an environment's built images are pushed to (at most one per environment,
-- checked by the server): every host then pulls the same digest.
ALTER TABLE registries ADD COLUMN builds INTEGER NOT NULL DEFAULT 0;
