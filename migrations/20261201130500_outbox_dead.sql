-- Bulk retry (`idem outbox retry --error/--account/--since/--until`,
-- crates/store/src/admin/bulk.rs) walks the dead rows in the order they went
-- dead, a bounded batch per transaction, resuming after the last row of the
-- previous batch. Without this index the only way to the dead rows is
-- `outbox_settled`, which also holds every succeeded and declined row of the
-- retention window (millions), so a retry of 30 rows would read the history.
-- Partial on `state = 'dead'`: it holds only the rows waiting for an operator,
-- and a retried row leaves it. The key is the time the row went dead
-- (`settled_at`, set by the statement that kills a row); `coalesce` so that a
-- dead row without one (only a hand edit makes it) still has a place — first —
-- and the keyset `(dead_at, id) > (cursor)` never meets a NULL. The predicate
-- and the expression must match the statements' literally for the planner.
--
-- Expand only (docs/upgrades.md): an index, which the previous release ignores.
-- Plain CREATE INDEX (migrations run in a transaction, as for the retention
-- indexes): on a large outbox it reads the table once and blocks writes
-- meanwhile; `IF NOT EXISTS` makes a second apply harmless.
CREATE INDEX IF NOT EXISTS outbox_dead
    ON outbox ((coalesce(settled_at, '-infinity'::timestamptz)), id)
    WHERE state = 'dead';
