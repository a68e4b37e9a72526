-- +goose Up

-- ---------------------------------------------------------------------------
-- Owned by inbox.
-- ---------------------------------------------------------------------------

-- Inbound m.direct_to_device deduplication: a remote server may send the same
-- EDU again (a retried transaction, or the same message_id in a new one). The
-- row is inserted first in the transaction that writes the EDU's inbox rows,
-- so a duplicate conflicts on the key and stores nothing, also when two copies
-- arrive at once on different replicas. Pruned after about 7 days.
CREATE TABLE todevice_inbound_dedupe (
    origin      text NOT NULL,
    message_id  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX todevice_inbound_dedupe_received_at ON todevice_inbound_dedupe (received_at);

-- TTL expiry and the oldest-age gauge walk the outbox by age: a range scan
-- of only the expired rows, however long the live queue is.
CREATE INDEX todevice_outbox_enqueued_at ON todevice_outbox (enqueued_at);
-- A queue table like device_inbox: vacuum it early.
ALTER TABLE todevice_outbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- ---------------------------------------------------------------------------
-- Owned by federation.
-- ---------------------------------------------------------------------------

-- One row per destination we have sent to: retry state and the sender lease.
--
-- Retry state survives restarts: failures counts consecutive failed attempts
-- (the exponent of the backoff) and retry_at says when the next attempt may
-- start; no sender starts before it, however many messages arrive meanwhile.
--
-- The lease makes one replica the destination's only sender. It is judged by
-- the database clock (now()), never a replica's: lease_until is when it lapses
-- unless renewed. Every acquisition increments lease_generation, and every
-- write the holder makes for the destination checks (holder, generation)
-- while locking this row, in the same transaction: a holder that lost its
-- lease (paused, partitioned) can no longer change anything.
CREATE TABLE federation_destinations (
    destination      text PRIMARY KEY,
    failures         integer NOT NULL DEFAULT 0,
    retry_at         timestamptz,
    lease_holder     text,
    lease_generation bigint NOT NULL DEFAULT 0,
    lease_until      timestamptz
);
-- The backing-off gauge counts these.
CREATE INDEX federation_destinations_retry_at ON federation_destinations (retry_at) WHERE retry_at IS NOT NULL;

-- The transaction being sent to a destination, stored before its first
-- attempt and resent unchanged (same txn_id, same bytes) until the
-- destination answers 200; then it and exactly the outbox rows it covers are
-- deleted in one transaction. At most one per destination, as the spec asks
-- a sender to wait for a 200 before sending another.
CREATE TABLE federation_txns (
    destination      text PRIMARY KEY REFERENCES federation_destinations (destination),
    txn_id           text   NOT NULL,
    -- The JSON array of EDUs, exactly as sent.
    edus             bytea  NOT NULL,
    origin_server_ts bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    -- The HTTP status of the last failed attempt (0: none or no answer) and
    -- how many attempts in a row got it: the rejection drop rule.
    last_status      integer NOT NULL DEFAULT 0,
    same_status      integer NOT NULL DEFAULT 0
);

-- The outbox positions a stored transaction covers, by EDU source
-- ('todevice' is inbox's todevice_outbox). Rows here are never expired from
-- the outbox underneath an unfinished transaction.
CREATE TABLE federation_txn_items (
    destination text   NOT NULL REFERENCES federation_txns (destination) ON DELETE CASCADE,
    source      text   NOT NULL,
    pos         bigint NOT NULL,
    PRIMARY KEY (destination, source, pos)
);

-- Inbound /send transactions answered 200, so that a replay of the same
-- (origin, txn_id) gets the first answer. Pruned after about a day.
CREATE TABLE federation_inbound_txns (
    origin      text  NOT NULL,
    txn_id      text  NOT NULL,
    response    bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_received_at ON federation_inbound_txns (received_at);

-- +goose Down
DROP TABLE federation_inbound_txns;
DROP TABLE federation_txn_items;
DROP TABLE federation_txns;
DROP TABLE federation_destinations;
ALTER TABLE todevice_outbox RESET (
    autovacuum_vacuum_scale_factor,
    autovacuum_vacuum_insert_scale_factor,
    autovacuum_analyze_scale_factor
);
DROP INDEX todevice_outbox_enqueued_at;
DROP TABLE todevice_inbound_dedupe;
