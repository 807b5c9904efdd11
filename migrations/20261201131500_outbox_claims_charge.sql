-- Reconciliation accounts for our rows that claim a charge (succeeded) or may
-- have one (unknown) in its window, in chunks ordered by creation
-- (crates/store/src/reconcile.rs, unlisted_rows): this index makes a chunk
-- cost its own rows, however long the table's history. Partial, so the
-- pending/in-flight churn and the settled-declined/dead history never enter
-- it. Expand only (docs/upgrades.md): an index, nothing a previous release
-- reads or writes differently. A plain CREATE INDEX, like the earlier index
-- migrations: it holds writes while it reads the table once.
CREATE INDEX IF NOT EXISTS outbox_claims_charge
    ON outbox (created_at, id)
    WHERE state IN ('succeeded', 'unknown');
