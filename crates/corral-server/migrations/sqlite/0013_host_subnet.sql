-- The size of each host's overlay subnet (its prefix length): a /24 holds 253 containers, a
-- /22 1,021. Chosen before the first host of the environment leases one; every lease of the
-- environment has this size.
ALTER TABLE environments ADD COLUMN overlay_host_prefix INTEGER NOT NULL DEFAULT 24;
