-- Attempt history and the operators' audit trail.
-- See docs/architecture.md ("Attempt history") and docs/operations.md ("Admin commands").

-- Every provider call made for an outbox row: the charge, the lookup that
-- resolves an uncertain attempt, the reconciler's refund of an extra charge.
-- Written by the dispatcher in the statement that records the attempt's result
-- (group commit, crates/store/src/settle.rs), whether or not the lease fence
-- accepted the result: the call happened either way.
--
-- Kept with its outbox row: retention deletes settled outbox rows, and the
-- foreign key deletes their history with them.
CREATE TABLE attempt (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id    bigint      NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    kind         text        NOT NULL CHECK (kind IN ('charge', 'lookup', 'refund')),
    -- The replica that made the call (its lease owner name).
    replica      text        NOT NULL,
    started_at   timestamptz NOT NULL,
    latency_ms   double precision NOT NULL CHECK (latency_ms >= 0),
    -- The HTTP status, or NULL when none arrived (transport error, timeout).
    http_status  smallint,
    -- The transport error or the failure's reason; NULL on success.
    error        text,
    -- The provider's id of the charge made or found, or of the refund.
    provider_id  text
);
CREATE INDEX attempt_outbox ON attempt (outbox_id, id);

-- Operator actions (`idem outbox retry|resolve`, `idem quarantine replay`),
-- each written in the transaction that makes the change. Never deleted by
-- retention: it is the record of who changed money-related state by hand.
CREATE TABLE audit (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    -- `--actor`, or the OS user who ran the command.
    actor     text        NOT NULL CHECK (actor <> ''),
    -- e.g. outbox.retry, outbox.resolve, quarantine.replay.
    action    text        NOT NULL,
    -- What was changed: outbox:<id>, quarantine:<id>.
    target    text        NOT NULL,
    reason    text,
    -- Before/after and anything else the action wants on record.
    details   jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_target ON audit (target, id);

-- A quarantined message an operator sent back through the pipeline.
ALTER TABLE quarantine
    ADD COLUMN replayed_at    timestamptz,
    ADD COLUMN replay_count   integer NOT NULL DEFAULT 0;
