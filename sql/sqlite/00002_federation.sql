-- +goose Up

-- The SQLite twin of postgres/00002_federation.sql: the same tables, keys and
-- meaning (see the comments there). Differences are only of dialect, as in
-- 00001: STRICT tables, times as INTEGER microseconds since the Unix epoch
-- bound by the store from the clock (the "database clock" of a one-process
-- database is that process's clock), and no row locks: every write runs on
-- the one writer connection in BEGIN IMMEDIATE, so a lease check and the
-- writes it guards can never interleave with another holder's.

-- ---------------------------------------------------------------------------
-- Owned by inbox.
-- ---------------------------------------------------------------------------

-- Inbound m.direct_to_device deduplication, inserted first in the
-- transaction that writes the EDU's inbox rows. Pruned after about 7 days.
CREATE TABLE todevice_inbound_dedupe (
    origin      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (origin, message_id)
) STRICT;
CREATE INDEX todevice_inbound_dedupe_received_at ON todevice_inbound_dedupe (received_at);

-- TTL expiry and the oldest-age gauge walk the outbox by age.
CREATE INDEX todevice_outbox_enqueued_at ON todevice_outbox (enqueued_at);

-- ---------------------------------------------------------------------------
-- Owned by federation.
-- ---------------------------------------------------------------------------

-- Retry state and the sender lease of each destination.
CREATE TABLE federation_destinations (
    destination      TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL DEFAULT 0,
    retry_at         INTEGER,
    lease_holder     TEXT,
    lease_generation INTEGER NOT NULL DEFAULT 0,
    lease_until      INTEGER
) STRICT, WITHOUT ROWID;
CREATE INDEX federation_destinations_retry_at ON federation_destinations (retry_at) WHERE retry_at IS NOT NULL;

-- The transaction being sent to a destination, stored before its first
-- attempt and resent unchanged until the destination answers 200.
CREATE TABLE federation_txns (
    destination      TEXT PRIMARY KEY REFERENCES federation_destinations (destination),
    txn_id           TEXT    NOT NULL,
    edus             BLOB    NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status      INTEGER NOT NULL DEFAULT 0,
    same_status      INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;

-- The outbox positions a stored transaction covers, by EDU source.
CREATE TABLE federation_txn_items (
    destination TEXT    NOT NULL REFERENCES federation_txns (destination) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    pos         INTEGER NOT NULL,
    PRIMARY KEY (destination, source, pos)
) STRICT, WITHOUT ROWID;

-- Inbound /send transactions answered 200, for replays. Pruned after a day.
CREATE TABLE federation_inbound_txns (
    origin      TEXT    NOT NULL,
    txn_id      TEXT    NOT NULL,
    response    BLOB    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
) STRICT;
CREATE INDEX federation_inbound_txns_received_at ON federation_inbound_txns (received_at);

-- +goose Down
DROP TABLE federation_inbound_txns;
DROP TABLE federation_txn_items;
DROP TABLE federation_txns;
DROP TABLE federation_destinations;
DROP INDEX todevice_outbox_enqueued_at;
DROP TABLE todevice_inbound_dedupe;
