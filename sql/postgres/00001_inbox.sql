-- +goose Up

-- One row. The epoch is a random id made when the schema is created; every
-- sync token carries it, so a token from a recreated or restored database is
-- recognised and acknowledges nothing (positions are never reused).
CREATE TABLE meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch     text NOT NULL
);
INSERT INTO meta (epoch) VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 16));

-- Local devices (owned by devicelists). nid identifies one incarnation of a
-- device: deleting a device leaves a tombstone (deleted_at set) until its
-- inbox is purged, and re-creating the same device id makes a new nid, so the
-- new device never sees the old one's messages. Sends lock the recipient rows
-- (FOR NO KEY UPDATE, in nid order): writers to one device serialize, which is
-- what makes the inbox positions of a device commit in order.
CREATE TABLE devices (
    nid          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      text NOT NULL,
    device_id    text NOT NULL,
    -- SHA-256 of the access token; NULL when the homeserver authenticates.
    token_hash   bytea,
    display_name text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE UNIQUE INDEX devices_live_key ON devices (user_id, device_id) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX devices_token_hash ON devices (token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX devices_tombstones ON devices (nid) WHERE deleted_at IS NOT NULL;

-- Per-device inboxes (owned by inbox). pos comes from one sequence, so a
-- position is never issued twice, not even across device re-creation. Rows
-- are keyed by user first so a distributed Postgres could shard by user_id,
-- and every hot query is a range of one (user_id, device_nid).
CREATE TABLE device_inbox (
    user_id     text   NOT NULL,
    device_nid  bigint NOT NULL,
    pos         bigint GENERATED ALWAYS AS IDENTITY,
    sender      text   NOT NULL,
    type        text   NOT NULL,
    -- The event content exactly as accepted (compact JSON object).
    content     bytea  NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_nid, pos)
);
-- Oldest-first walks: the oldest-pending gauge and expiry. Deliberately not
-- an index on pos: the planner would be tempted to serve a device's
-- "pos > since ORDER BY pos" from it, filtering every other device's rows,
-- where the primary key answers the same query from one device's range.
CREATE INDEX device_inbox_enqueued_at ON device_inbox (enqueued_at);
-- A queue table: rows are inserted and deleted all day. Vacuum it early so
-- dead index entries do not pile up in front of the live ones.
ALTER TABLE device_inbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- sendToDevice transaction ids (owned by inbox): the spec's retransmission
-- key is the path (event type + txn id) from the same device. The row is
-- inserted first in the accepting transaction, so a concurrent retry waits on
-- the unique key and then sees the recorded response.
CREATE TABLE send_txns (
    user_id    text  NOT NULL,
    device_id  text  NOT NULL,
    event_type text  NOT NULL,
    txn_id     text  NOT NULL,
    response   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id, event_type, txn_id)
);
CREATE INDEX send_txns_created_at ON send_txns (created_at);

-- The federation outbox of to-device EDUs (owned by inbox, drained by
-- federation). A destination's row is locked by every transaction that queues
-- for it, so its EDUs commit in position order; the sender deletes exactly
-- the rows it sent, never a range.
CREATE TABLE todevice_outbox_destinations (
    destination      text PRIMARY KEY,
    last_enqueued_at timestamptz NOT NULL
);
CREATE TABLE todevice_outbox (
    destination text   NOT NULL,
    pos         bigint GENERATED ALWAYS AS IDENTITY,
    message_id  text   NOT NULL,
    -- The complete EDU, built at accept time and never changed.
    edu         bytea  NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, pos)
);

-- +goose Down
DROP TABLE todevice_outbox;
DROP TABLE todevice_outbox_destinations;
DROP TABLE send_txns;
DROP TABLE device_inbox;
DROP TABLE devices;
DROP TABLE meta;
