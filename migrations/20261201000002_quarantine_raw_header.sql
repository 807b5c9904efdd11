-- A message whose content header no AMQP library reads (a short string that is
-- not UTF-8, a header nested past idem's bounds, an unknown field type) is
-- taken off the queue by idem's own reader (crates/inbox/src/raw) and
-- quarantined with the header's bytes as they came off the wire, so nothing
-- the producer sent is lost (crates/inbox/src/salvage). At most
-- idem_store::quarantine::MAX_KEPT_HEADER bytes; `raw_header_size` is the
-- whole. Expand only (docs/upgrades.md): nullable, so the previous release's
-- inserts keep working. `IF NOT EXISTS`: safe to apply twice.
ALTER TABLE quarantine
    -- The content header frame's payload (class, weight, body size, flags,
    -- properties), or its first bytes; NULL for a message lapin read.
    ADD COLUMN IF NOT EXISTS raw_header      bytea,
    -- The whole content header's size in bytes.
    ADD COLUMN IF NOT EXISTS raw_header_size integer;
