-- A value sealed under the master key file when the datastore is made (or first opened by a
-- release that checks): a server whose master.key does not open it was given another key, and
-- refuses to start rather than run with secrets it cannot read.
CREATE TABLE key_check (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    sealed BLOB NOT NULL
);
