-- +goose Up

-- The SQLite twin of postgres/00001_inbox.sql: the same tables, keys and
-- meaning. Differences are only of dialect:
--   * Tables are STRICT, so a value of the wrong type is an error instead of
--     being stored as whatever it happens to be.
--   * Times are INTEGER microseconds since the Unix epoch (UTC), the
--     precision of PostgreSQL's timestamptz. The store binds them from the
--     clock once per transaction, as now() is in PostgreSQL; the defaults
--     are for rows written by hand.
--   * Positions and nids are INTEGER PRIMARY KEY AUTOINCREMENT: without
--     AUTOINCREMENT SQLite hands out max(rowid)+1, which reuses positions
--     once the newest rows are deleted (an inbox emptied by an ack).
--     AUTOINCREMENT keeps the high-water mark in sqlite_sequence, which is
--     what makes "positions are never reused" hold.
--   * There are no row locks: the store runs every write on one connection
--     in BEGIN IMMEDIATE transactions, one at a time, so positions commit in
--     the order they are issued and a reader never sees a lower position
--     commit after a higher one.

-- One row. The epoch is a random id made when the schema is created; every
-- sync token carries it, so a token from a recreated or restored database is
-- recognised and acknowledges nothing (positions are never reused).
CREATE TABLE meta (
    singleton INTEGER PRIMARY KEY DEFAULT 1 CHECK (singleton = 1),
    epoch     TEXT NOT NULL
) STRICT;
INSERT INTO meta (epoch) VALUES (lower(hex(randomblob(8))));

-- Local devices (owned by devicelists). nid identifies one incarnation of a
-- device: deleting a device leaves a tombstone (deleted_at set) until its
-- inbox is purged, and re-creating the same device id makes a new nid, so the
-- new device never sees the old one's messages.
CREATE TABLE devices (
    nid          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    -- SHA-256 of the access token; NULL when the homeserver authenticates.
    token_hash   BLOB,
    display_name TEXT,
    created_at   INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    deleted_at   INTEGER
) STRICT;
CREATE UNIQUE INDEX devices_live_key ON devices (user_id, device_id) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX devices_token_hash ON devices (token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX devices_tombstones ON devices (nid) WHERE deleted_at IS NOT NULL;

-- Per-device inboxes (owned by inbox). pos is the rowid, so walking the table
-- by pos (the oldest-pending gauge, expiry) needs no index of its own; every
-- hot query is a range of one (user_id, device_nid) in device_inbox_device.
CREATE TABLE device_inbox (
    pos         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL,
    device_nid  INTEGER NOT NULL,
    sender      TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    -- The event content exactly as accepted (compact JSON object).
    content     BLOB    NOT NULL,
    enqueued_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX device_inbox_device ON device_inbox (device_nid);

-- sendToDevice transaction ids (owned by inbox): the spec's retransmission
-- key is the path (event type + txn id) from the same device. The row is
-- inserted first in the accepting transaction; writers run one at a time, so
-- a retry sees the recorded response.
CREATE TABLE send_txns (
    user_id    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    txn_id     TEXT    NOT NULL,
    response   BLOB    NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    PRIMARY KEY (user_id, device_id, event_type, txn_id)
) STRICT;
CREATE INDEX send_txns_created_at ON send_txns (created_at);

-- The federation outbox of to-device EDUs (owned by inbox, drained by
-- federation). The sender deletes exactly the rows it sent, never a range.
CREATE TABLE todevice_outbox_destinations (
    destination      TEXT PRIMARY KEY,
    last_enqueued_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE todevice_outbox (
    pos         INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    -- The complete EDU, built at accept time and never changed.
    edu         BLOB    NOT NULL,
    enqueued_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX todevice_outbox_destination ON todevice_outbox (destination, pos);

-- +goose Down
DROP TABLE todevice_outbox;
DROP TABLE todevice_outbox_destinations;
DROP TABLE send_txns;
DROP TABLE device_inbox;
DROP TABLE devices;
DROP TABLE meta;
