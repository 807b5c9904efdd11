-- Result events: when a charge settles (succeeded, declined, dead), a result
-- event is published to the `idem.results` exchange and, if the request asked,
-- to its `reply_to` queue. This is an outbox of its own: the event is written
-- in the transaction that settles the row, and a publisher (crates/events)
-- sends it with publisher confirms and deletes it once the broker confirmed.
-- See docs/architecture.md, "Result events".

-- One row per publish still owed. A row is a snapshot of the outbox row at the
-- moment it became final, not a pointer to it: the outbox row may change later
-- (an operator re-queues a dead row) or be deleted by retention before the
-- event goes out, and the event must still say what was settled then. That is
-- also why `outbox_id` carries no foreign key.
--
-- Published rows are deleted, not flagged: the table holds only the backlog,
-- stays small, needs no retention of its own, and its claim index never fills
-- with dead tuples of old events. The broker (and the consumer's dedup by
-- message_id) is the record of what was sent; the outbox row keeps the result.
CREATE TABLE result_event (
    -- bigint identity: publish order (oldest first) and a compact key.
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Why the event exists, which decides where it goes:
    --   settled  - the row became final: exchange + the request's reply_to;
    --   replayed - a duplicate request of an already final row: exchange + the
    --              duplicate's own reply_to (its stored result, never a new charge);
    --   reply    - a duplicate that arrived while the row was still open and
    --              asked for a reply elsewhere: only that reply_to.
    kind               text        NOT NULL CHECK (kind IN ('settled', 'replayed', 'reply')),
    outbox_id          bigint      NOT NULL,
    scope              text        NOT NULL,
    message_id         text        NOT NULL,
    reference_id       uuid        NOT NULL,
    account_id         text        NOT NULL,
    amount             bigint      NOT NULL,
    currency           text        NOT NULL,
    -- Only final states have events; the AMQP message_id is derived from
    -- (reference_id, state), so every send of one settlement carries one id.
    state              outbox_state NOT NULL CHECK (state IN ('succeeded', 'declined', 'dead')),
    provider_charge_id text,
    -- The provider's charge (succeeded) or decline (declined), as stored.
    result             jsonb,
    -- Why a dead row died (outbox.last_error); NULL for the other states.
    error              text,
    settled_at         timestamptz NOT NULL,
    traceparent        text,
    -- Where the direct reply goes (default exchange, routing key = reply_to),
    -- and the correlation_id it echoes. NULL reply_to: no direct reply.
    reply_to           text,
    correlation_id     text,
    -- Publish attempts (claims), and when the event may next be claimed: a
    -- claim pushes it to now() + lease, so an event whose publisher died is
    -- claimed again after the lease without a separate lease column.
    attempts           integer     NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'reply' OR reply_to IS NOT NULL)
);
-- The publisher's claim: due events, oldest first.
CREATE INDEX result_event_due ON result_event (next_attempt_at, id);

-- Replies owed to duplicates that arrived while their charge was still open
-- (pending, in_flight, unknown) and named another reply_to or correlation_id
-- than the original: a producer that retried with a new reply queue still gets
-- its answer. The settle trigger below turns them into `reply` events and
-- deletes them. Open rows only, so retention (which deletes final rows) never
-- meets one; the cascade is for an operator deleting an open row by hand.
CREATE TABLE result_reply (
    outbox_id       bigint      NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    reply_to        text        NOT NULL,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- A producer retrying the same request many times is owed one reply.
    UNIQUE NULLS NOT DISTINCT (outbox_id, reply_to, correlation_id)
);

-- THE TRIGGER: every statement that makes an outbox row final writes its
-- result event in the same transaction, whoever runs it — the dispatcher's
-- fenced settle, its late-success write, the reconciler settling an `unknown`
-- row it found at the provider, an operator resolving a row by SQL. A trigger
-- rather than a CTE in each settle statement, so that no present or future
-- path can forget it: "settled but no event" cannot be committed.
--
-- It fires only on a change INTO a final state (claims, retries and rescues
-- are filtered out by the WHEN clause before the function is called, so they
-- cost one comparison), and never for a final row rewritten to the same state.
-- A dead row later re-queued and settled again gets a new event, under the
-- message_id of its new state.
CREATE FUNCTION result_event_on_settle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH waiting AS (
        DELETE FROM result_reply WHERE outbox_id = NEW.id
        RETURNING reply_to, correlation_id
    ), target AS (
        SELECT 'settled' AS kind, NEW.reply_to AS reply_to, NEW.correlation_id AS correlation_id
        UNION ALL
        SELECT 'reply', w.reply_to, w.correlation_id FROM waiting w
    )
    INSERT INTO result_event (kind, outbox_id, scope, message_id, reference_id, account_id,
                              amount, currency, state, provider_charge_id, result, error,
                              settled_at, traceparent, reply_to, correlation_id)
    SELECT t.kind, NEW.id, NEW.scope, NEW.message_id, NEW.reference_id, NEW.account_id,
           NEW.amount, NEW.currency, NEW.state, NEW.provider_charge_id, NEW.result,
           CASE WHEN NEW.state = 'dead' THEN NEW.last_error END,
           coalesce(NEW.settled_at, now()), NEW.traceparent, t.reply_to, t.correlation_id
    FROM target t;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_result_event
    AFTER UPDATE OF state ON outbox
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'declined', 'dead') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION result_event_on_settle();
