-- The overlay between hosts: per environment a range, a mode and a pre-shared key (sealed with
-- XChaCha20-Poly1305 under the master key file in the data dir, which is never in this
-- database); per host its public key, its last overlay endpoint and its lease of the range.
ALTER TABLE environments ADD COLUMN overlay_mode TEXT NOT NULL DEFAULT 'wireguard';
ALTER TABLE environments ADD COLUMN overlay_cidr TEXT NOT NULL DEFAULT '10.42.0.0/16';
ALTER TABLE environments ADD COLUMN overlay_psk BLOB;
ALTER TABLE environments ADD COLUMN overlay_psk_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN overlay_public_key TEXT;
ALTER TABLE hosts ADD COLUMN overlay_endpoint TEXT;

CREATE TABLE overlay_leases (
    environment_id TEXT NOT NULL REFERENCES environments(id),
    host_id        TEXT NOT NULL UNIQUE REFERENCES hosts(id),
    -- e.g. 10.42.3.0/24
    subnet         TEXT NOT NULL,
    PRIMARY KEY (environment_id, subnet)
);
