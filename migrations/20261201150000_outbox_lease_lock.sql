-- The liveness of a lease's holder (issue 14): each dispatcher replica holds
-- a session-level advisory lock under a random key for as long as its
-- database session lives, and a claim stores that key on the rows it leases.
-- PostgreSQL releases the lock the moment the holder's session ends (a
-- SIGKILL, a crash, a cut connection), so another replica's rescuer can see
-- that an in-flight row's holder is gone without waiting out the lease
-- (crates/store/src/rescue.rs). The key counts only together with
-- lease_lock_token, the lease token it was stored with: a statement that
-- changes or clears the lease without knowing these columns (an older
-- release's claim, settle or rescue, during a rolling upgrade) leaves a
-- stale key behind, and the token no longer matching is what makes it stale.
-- A row whose key is missing or stale waits for its lease expiry alone.
-- Expand only (docs/upgrades.md): a nullable column without a default is
-- added without rewriting the table, and older releases never read it.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS lease_lock bigint;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS lease_lock_token uuid;
-- The claim walks accounts after a cursor that starts at '' (exclusive): an
-- empty account id would never be walked. The inbox refuses one already;
-- this makes it a rule of the table. NOT VALID: existing rows are not read.
-- Re-runnable like every migration here (ADD CONSTRAINT has no IF NOT EXISTS).
DO $$ BEGIN
    ALTER TABLE outbox ADD CONSTRAINT outbox_account_id_not_empty
        CHECK (account_id <> '') NOT VALID;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
