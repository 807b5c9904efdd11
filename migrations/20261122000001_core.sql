-- idem's core schema: inbox (dedup keys), outbox (charges to make), quarantine
-- (bad input) and key conflicts. See docs/architecture.md for the row lifecycle.

-- One row per logical operation (scope, message_id). The primary key is the dedup:
-- an INSERT ... ON CONFLICT against it decides "first or duplicate" atomically.
CREATE TABLE inbox (
    scope            text        NOT NULL,
    message_id       text        NOT NULL,
    -- SHA-256 of (account_id, amount, currency); bytea, not hex text: half the size.
    fingerprint      bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- How many later deliveries carried the same key and fingerprint (absorbed).
    duplicates       integer     NOT NULL DEFAULT 0,
    -- How many later deliveries carried the same key with another fingerprint.
    conflicts        integer     NOT NULL DEFAULT 0,
    received_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, message_id)
);
-- Retention deletes the oldest keys first, in bounded batches.
CREATE INDEX inbox_received_at ON inbox (received_at);

-- The states of an outbox row; see docs/architecture.md.
CREATE TYPE outbox_state AS ENUM ('pending', 'in_flight', 'unknown', 'succeeded', 'declined', 'dead');

CREATE TABLE outbox (
    -- bigint identity: arrival order, and a compact key for claims and fences.
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope              text        NOT NULL,
    message_id         text        NOT NULL,
    -- UUIDv5 over (scope, message_id): the provider's idempotency key. UNIQUE makes
    -- a second outbox row for one logical operation impossible, whatever the code does.
    reference_id       uuid        NOT NULL UNIQUE,
    account_id         text        NOT NULL,
    -- Minor units; bigint because int4 tops out at ~21 million in major units.
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description        text,
    reply_to           text,
    correlation_id     text,
    traceparent        text,
    state              outbox_state NOT NULL DEFAULT 'pending',
    -- Provider calls made or started for this row (claims), for the attempt limit.
    attempts           integer     NOT NULL DEFAULT 0,
    -- The replica holding the row while in_flight, and the token that fences its
    -- writes: a result is recorded only WHERE lease_token = the holder's token.
    lease_owner        text,
    lease_token        uuid,
    lease_expires_at   timestamptz,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    -- Set when an attempt's outcome became uncertain (timeout, 5xx, expired lease);
    -- such a row is resolved by lookup or keyed retry, never assumed uncharged.
    uncertain_since    timestamptz,
    provider_charge_id text,
    -- The settled answer (charge, or decline), returned again to duplicates.
    result             jsonb,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    settled_at         timestamptz,
    CONSTRAINT in_flight_has_lease CHECK (
        state <> 'in_flight' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- The claim reads only due rows: a partial index keeps it an index scan however
-- many settled rows the table holds.
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state IN ('pending', 'unknown');
-- The rescuer finds expired leases without scanning.
CREATE INDEX outbox_lease ON outbox (lease_expires_at) WHERE state = 'in_flight';
CREATE INDEX outbox_key ON outbox (scope, message_id);

-- Bad input, kept whole so nothing is lost: raw bytes, properties and why.
CREATE TABLE quarantine (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stable machine code (missing_message_id, not_json, schema, too_large, ...).
    reason_code   text        NOT NULL,
    reason        text        NOT NULL,
    -- Raw key bytes (may be absent, or not valid as text), for inspection.
    message_id    bytea,
    -- AMQP properties and headers as JSON (strings sanitised of NUL).
    properties    jsonb       NOT NULL,
    body          bytea       NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_received_at ON quarantine (received_at);

-- Same key, other payload: never charged, kept for the producer's owner to see.
CREATE TABLE key_conflict (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope                text        NOT NULL,
    message_id           text        NOT NULL,
    stored_fingerprint   bytea       NOT NULL,
    received_fingerprint bytea       NOT NULL,
    body                 bytea       NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX key_conflict_key ON key_conflict (scope, message_id);
