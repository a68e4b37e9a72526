-- +goose Up

-- The SQLite twin of postgres/00004_devicelists_federation.sql: the same
-- tables, keys and meaning (see there), in the dialect of 00001_inbox.sql.
-- applied_ids is a JSON array of integers; stale is 0 or 1; times are
-- INTEGER microseconds. Every write runs on the one writer connection, one
-- transaction at a time, so the outbox's positions commit in order.

CREATE TABLE device_list_heads (
    user_id   TEXT    PRIMARY KEY,
    stream_id INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE device_list_outbox (
    pos         INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT    NOT NULL,
    edu_type    TEXT    NOT NULL,
    edu         BLOB    NOT NULL,
    enqueued_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX device_list_outbox_destination ON device_list_outbox (destination, pos);
CREATE INDEX device_list_outbox_enqueued_at ON device_list_outbox (enqueued_at);

CREATE TABLE remote_device_lists (
    user_id        TEXT    PRIMARY KEY,
    stream_id      INTEGER NOT NULL DEFAULT 0,
    applied_ids    TEXT    NOT NULL DEFAULT '[]',
    stale          INTEGER NOT NULL DEFAULT 1 CHECK (stale IN (0, 1)),
    seen_stream_id INTEGER NOT NULL DEFAULT 0,
    failures       INTEGER NOT NULL DEFAULT 0,
    retry_at       INTEGER,
    updated_at     INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT, WITHOUT ROWID;
CREATE INDEX remote_device_lists_due ON remote_device_lists (retry_at) WHERE stale = 1;

CREATE TABLE remote_devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    keys         BLOB,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
) STRICT, WITHOUT ROWID;

INSERT INTO remote_device_lists (user_id, retry_at)
SELECT DISTINCT r.user_id, CAST(unixepoch('subsec') * 1000000 AS INTEGER) FROM room_members r
JOIN encrypted_rooms e ON e.room_id = r.room_id
JOIN room_members l ON l.room_id = r.room_id
WHERE r.is_local = 0 AND r.membership IN ('join', 'invite', 'knock')
  AND l.is_local = 1 AND l.membership IN ('join', 'invite', 'knock');

-- +goose Down
DROP TABLE remote_devices;
DROP TABLE remote_device_lists;
DROP TABLE device_list_outbox;
DROP TABLE device_list_heads;
