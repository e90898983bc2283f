-- A new host row changes nothing the overlay sync sends: it has no key, no endpoint and no
-- lease yet (those come after, by updates and a lease insert, which count). Counting it made
-- every registration — thousands in a connect storm, most of them on no overlay — send the
-- sync back to re-read the environment's members.
DROP TRIGGER counters_host_new ON hosts;
