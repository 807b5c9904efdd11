-- The churn tables keep their pages (issue 14; docs/performance.md, "The
-- settle's join" and "Vacuum on the churn tables"). `account_slot` and
-- `result_event` take an insert and a delete per message and hold only what
-- is in flight, so a vacuum finds their last pages empty nearly every time
-- and, by default, truncates them: for that it needs an ACCESS EXCLUSIVE
-- lock on a table every claim and every settle writes, and it retries for up
-- to 5 s to get one (wait event VacuumTruncate), then returns the pages to
-- the file system that the next second's inserts extend again. Measured on
-- the tuned bench: one vacuum of `account_slot` waited 2.5 s for that lock.
-- Without truncation the tables keep the few pages their in-flight rows need.
-- A storage parameter: SHARE UPDATE EXCLUSIVE, no rewrite, and the previous
-- release reads and writes the tables as before.
SET LOCAL lock_timeout = '5s';

ALTER TABLE account_slot SET (vacuum_truncate = false);
ALTER TABLE result_event SET (vacuum_truncate = false);
