-- A removed environment keeps its row (hosts, containers and events that named it still
-- resolve), renamed `NAME#ID` so that its name can be used again.
ALTER TABLE environments ADD COLUMN removed_at BIGINT;
