-- Retention: the indexes the periodic deletes need so that every batch is an
-- index range scan from the oldest row, never a sequential scan of a large
-- table (see crates/store/src/retention.rs and docs/operations.md, "Retention").
--
-- The inbox needs none: `inbox_received_at` (core schema) already orders keys
-- by age. Retention keys on `last_seen_at`, but `last_seen_at >= received_at`,
-- so `received_at < cutoff` is a necessary condition the delete adds to use
-- that index. Indexing `last_seen_at` instead would make every absorbed
-- duplicate's `UPDATE ... last_seen_at = now()` a non-HOT update that touches
-- an index; the price of not doing so is re-reading the few old-but-recently-
-- seen keys in each batch.
--
-- Plain CREATE INDEX (not CONCURRENTLY): migrations run in a transaction, and
-- these tables are new; on a large existing outbox this briefly blocks writes.

-- Only terminal rows are ever deleted, and only by `settled_at`: a partial index
-- over exactly those rows keeps it small (open rows are never in it) and lets the
-- delete walk from the oldest settled row. The predicate must match the delete's
-- `state IN (...)` literally for the planner to use it.
CREATE INDEX outbox_settled ON outbox (settled_at)
    WHERE state IN ('succeeded', 'declined', 'dead');

-- Key conflicts are deleted oldest first after their window, like quarantine
-- (which has `quarantine_received_at` since the core schema).
CREATE INDEX key_conflict_received_at ON key_conflict (received_at);
