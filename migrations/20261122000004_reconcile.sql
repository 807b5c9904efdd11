-- Reconciliation: compensations (refunds of extra charges at the provider),
-- each with the evidence that justified it.

-- One row per extra charge the reconciler refunds. `charge_id` is UNIQUE: two
-- reconcilers (or one run twice) that find the same extra charge agree on one
-- row, and the refund goes out under `refund_key`, derived from the charge id
-- alone, so the provider replays a retried refund instead of refunding twice.
CREATE TABLE compensation (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The logical operation that was charged more than once.
    reference_id    uuid        NOT NULL,
    -- Our outbox row for it (NULL if retention removed it since).
    outbox_id       bigint,
    -- The extra charge being refunded, and the one kept.
    charge_id       text        NOT NULL UNIQUE,
    kept_charge_id  text        NOT NULL,
    amount          bigint      NOT NULL,
    currency        text        NOT NULL,
    -- The refund's idempotency key (UUIDv5 over the charge id).
    refund_key      uuid        NOT NULL,
    -- pending: decided, refund not confirmed yet; refunded: the provider
    -- confirmed; manual: the provider offers no refunds, an operator must act.
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'refunded', 'manual')),
    refund_id       text,
    -- Every charge the provider listed under the reference when decided, and
    -- the outbox row's state then: why this charge was judged extra.
    evidence        jsonb       NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    refunded_at     timestamptz
);
CREATE INDEX compensation_reference ON compensation (reference_id);
-- Unfinished compensations are retried by every run: find them without a scan.
CREATE INDEX compensation_open ON compensation (id) WHERE state = 'pending';
