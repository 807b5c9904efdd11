-- Per-account ordering: at most one charge per account_id in flight, across all
-- replicas, dispatched in outbox (arrival) order.

-- One slot per account, held by the outbox row in flight for it. The primary key
-- is the guarantee: two claimers racing for one account cannot both insert, even
-- when their snapshots disagree about which rows are open.
CREATE TABLE account_slot (
    account_id  text        PRIMARY KEY,
    outbox_id   bigint      NOT NULL UNIQUE,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);

-- The claim's "is there an older open row for this account?" probe.
CREATE INDEX outbox_open_by_account ON outbox (account_id, id)
    WHERE state IN ('pending', 'in_flight', 'unknown');
