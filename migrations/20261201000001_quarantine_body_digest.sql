-- A quarantine row keeps a bounded prefix of a body, never a hostile producer's
-- whole 100 MiB, plus what identifies the whole: its size and SHA-256
-- (crates/store/src/quarantine.rs, MAX_KEPT_BODY). Expand only
-- (docs/upgrades.md): every column is nullable or has a constant default, so
-- the previous release's inserts, which do not name them, keep working; their
-- rows hold the whole body, and readers take `octet_length(body)` and
-- `sha256(body)` where these are NULL. `IF NOT EXISTS`: safe to apply twice.
ALTER TABLE quarantine
    -- The body's full size in bytes, as it arrived.
    ADD COLUMN IF NOT EXISTS body_size            bigint,
    -- SHA-256 of the whole body; bytea, not hex text, as inbox.fingerprint.
    ADD COLUMN IF NOT EXISTS body_sha256          bytea,
    -- `body` holds only the first bytes: the message cannot be replayed.
    ADD COLUMN IF NOT EXISTS body_truncated       boolean NOT NULL DEFAULT false,
    -- `properties` holds a summary (headers omitted, long strings cut): the
    -- message cannot be replayed with its own properties.
    ADD COLUMN IF NOT EXISTS properties_truncated boolean NOT NULL DEFAULT false;
