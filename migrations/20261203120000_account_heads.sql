-- Per-account queue heads (issue 14; docs/performance.md, "Claims under
-- skew: heads"). The per-account claim finds an account's head (its oldest
-- open row) by descending `outbox_open_by_account` to the account's smallest
-- open id. That index keeps an entry for every version of the account's rows
-- settled since the last vacuum of `outbox` (two per charge), all of them
-- below the head, and every descent from the account's start steps over
-- them: 847 buffers per walk after a few thousand charges on 5 accounts,
-- and on a table of months of history, whose vacuum comes once its dead
-- versions pass 20% of its live rows, the cost grows with the charges
-- settled since. A lower bound per account lets every lookup start at the
-- head instead.
--
-- `account_head` has a row for every account with open work, and `floor` is
-- a lower bound of the account's open ids: no open row of the account has
-- an id below it. Lookups of the head start there
-- (`outbox_open_by_account`, `id >= floor`), and the claim walks the
-- accounts with work through this table's primary key.
--
-- The bound is kept true by the triggers below, for every writer (an older
-- release's inbox and operator tools included): a row that becomes open
-- (inserted, or moved back from a final state) lowers its account's floor to
-- its id if need be, creating the account's row if there is none, and gives
-- `version` a new value of a sequence (never a value a row had before, so a
-- row deleted and created again cannot look unchanged). Raising the floor or deleting the row (crates/store/src/heads.rs:
-- the settle, and the claim's tidy) is done only where `version` still is
-- what the statement read together with the open rows it judged: a row made
-- open since then by a committed transaction, or by one still running whose
-- trigger holds the account's row, has bumped it and the raise is not made
-- (the UPDATE re-reads the row's latest version once the lock is free). A row
-- whose trigger has not run yet lowers the floor again, or recreates the row,
-- when it does.
SET LOCAL lock_timeout = '5s';

CREATE SEQUENCE IF NOT EXISTS account_head_version;

CREATE TABLE IF NOT EXISTS account_head (
    account_id text   PRIMARY KEY,
    floor      bigint NOT NULL,
    version    bigint NOT NULL DEFAULT nextval('account_head_version')
) WITH (
    -- Updated in place by every insert batch and every settle of its
    -- account: room on the page keeps those updates HOT.
    fillfactor = 70,
    -- A churn table, like `account_slot` (20261201170000_fewer_writes.sql,
    -- 20261203090000_churn_tables_keep_their_pages.sql).
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- New rows: one upsert per statement and account, in account order (two
-- inserting transactions lock the same heads in the same order). Rows
-- inserted in a final state (imports, the bench's synthetic history) have
-- no head.
CREATE OR REPLACE FUNCTION account_head_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_head AS h (account_id, floor)
    SELECT account_id, min(id) FROM added
    WHERE state IN ('pending', 'in_flight', 'unknown')
    GROUP BY account_id
    ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE
        SET floor = least(h.floor, excluded.floor), version = nextval('account_head_version');
    RETURN NULL;
END $$;

-- A row moved back into an open state (an operator's retry of a dead row,
-- reconcile putting a row back in play): the same, for that row.
CREATE OR REPLACE FUNCTION account_head_on_reopen() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_head AS h (account_id, floor)
    VALUES (NEW.account_id, NEW.id)
    ON CONFLICT (account_id) DO UPDATE
        SET floor = least(h.floor, excluded.floor), version = nextval('account_head_version');
    RETURN NULL;
END $$;

-- Created only if missing (re-runnable like every migration here): a DROP
-- TRIGGER, even of a trigger that does not exist, would take an ACCESS
-- EXCLUSIVE lock on outbox and hold off its readers too.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'outbox'::regclass AND tgname = 'outbox_account_head_insert') THEN
        CREATE TRIGGER outbox_account_head_insert
            AFTER INSERT ON outbox
            REFERENCING NEW TABLE AS added
            FOR EACH STATEMENT EXECUTE FUNCTION account_head_on_insert();
    END IF;
    -- The WHEN is judged per updated row without calling the function: the
    -- claim's and the settle's updates (open to open, open to final) pay a
    -- comparison, not a trigger.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'outbox'::regclass AND tgname = 'outbox_account_head_reopen') THEN
        CREATE TRIGGER outbox_account_head_reopen
            AFTER UPDATE OF state ON outbox
            FOR EACH ROW
            WHEN (OLD.state NOT IN ('pending', 'in_flight', 'unknown')
                  AND NEW.state IN ('pending', 'in_flight', 'unknown'))
            EXECUTE FUNCTION account_head_on_reopen();
    END IF;
END $$;

-- The open rows already there. CREATE TRIGGER took a SHARE ROW EXCLUSIVE
-- lock on outbox, which waited for every transaction writing to it and
-- holds off new writers (not readers, nor claims' row locks) until this
-- commits: nothing open is missed.
INSERT INTO account_head (account_id, floor)
SELECT account_id, min(id) FROM outbox
WHERE state IN ('pending', 'in_flight', 'unknown')
GROUP BY account_id
ON CONFLICT (account_id) DO UPDATE SET floor = least(account_head.floor, excluded.floor);
