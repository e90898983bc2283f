-- A command stays `pending` until its host answers: which pending commands a session has
-- written to its tunnel is kept in that session's memory, not in the row (see the server's
-- `store::queue`). Commands an earlier version marked `sent` are pending again, as they were
-- on every reconnect.
UPDATE commands SET state = 'pending' WHERE state = 'sent';

-- A session reads its host's queue oldest first: this index gives the rows in that order, so a
-- read stops at its limit, and with `+deadline_at` in the query it is the one chosen (on the
-- deadline index SQLite walked every open command of every host, then sorted).
DROP INDEX commands_host_open;
CREATE INDEX commands_host_queue ON commands(host_id, state, created_at, id);
