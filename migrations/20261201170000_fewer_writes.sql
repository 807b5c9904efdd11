-- Fewer writes per message (issue 14; docs/performance.md, "Writes per
-- message"). Both changes are to the two tables that take an insert and a
-- delete per message and otherwise hold only what is in flight.
SET LOCAL lock_timeout = '5s';

-- 1. Autovacuum for the churn tables: by default a table is vacuumed once its
-- dead rows pass 50 + 20% of its live ones, which for a table of a few hundred
-- live rows and thousands of deletes a second means a heap and an index of
-- mostly dead entries between two passes, read by every claim of the
-- publisher and every slot probe. A fixed threshold vacuums them every 1,000
-- dead rows, whatever the live count; without cost delay a pass over a table
-- this small takes milliseconds. First, because these take a lock that waits
-- for a vacuum in progress: the exclusive lock of step 2 is then held only
-- for the moment of its own change.
ALTER TABLE result_event SET (autovacuum_vacuum_threshold = 1000,
                              autovacuum_vacuum_scale_factor = 0,
                              autovacuum_vacuum_cost_delay = 0);
ALTER TABLE account_slot SET (autovacuum_vacuum_threshold = 1000,
                              autovacuum_vacuum_scale_factor = 0,
                              autovacuum_vacuum_cost_delay = 0);

-- 2. account_slot's UNIQUE (outbox_id) goes: one index entry per claimed
-- message for a rule the primary key already makes. A slot row names the row
-- holding its account, and a row has one account, so two slots naming one row
-- would need the row under two accounts. Every release from this one finds a
-- slot by (account_id, outbox_id), the primary key and its row. Unlike the
-- rule in docs/upgrades.md (drop what an old replica reads only once none
-- runs), the previous release may run against this: it frees slots by
-- outbox_id alone, which now reads the table without an index. The table
-- holds one live row per account in flight (at most the replicas' dispatch
-- concurrency), and the autovacuum settings above keep its dead rows few, so
-- that read is a page or two for the length of a rollout.
ALTER TABLE account_slot DROP CONSTRAINT IF EXISTS account_slot_outbox_id_key;
