-- A container's address on its host's overlay network (what service discovery answers with).
ALTER TABLE containers ADD COLUMN ip TEXT;
