-- +goose Up

-- The SQLite twin of postgres/00003_devicelists.sql: the same tables, keys
-- and meaning, in the dialect of 00001_inbox.sql (STRICT tables, INTEGER
-- microsecond times, AUTOINCREMENT positions). 00002 is left to the
-- federation schema.

-- The device keys a device uploaded (owned by devicelists): the DeviceKeys
-- object exactly as the homeserver gave it.
ALTER TABLE devices ADD COLUMN keys BLOB;

-- Cross-signing keys of local and remote users (owned by devicelists).
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL CHECK (key_type IN ('master', 'self_signing', 'user_signing')),
    key_json BLOB NOT NULL,
    PRIMARY KEY (user_id, key_type)
) STRICT, WITHOUT ROWID;

-- Rooms the homeserver told us are encrypted. Only encrypted rooms count for
-- device lists: nobody encrypts for the members of a plaintext room.
CREATE TABLE encrypted_rooms (
    room_id TEXT PRIMARY KEY
) STRICT, WITHOUT ROWID;

-- Membership of local and remote users, as the homeserver last reported it.
-- stream_ordering is the homeserver's: an update older than the stored one is
-- ignored, so retried or reordered updates are harmless. join, invite and knock
-- count as sharing the room (clients encrypt for invited and knocking users).
-- STRICT has no boolean type: is_local is 0 or 1.
CREATE TABLE room_members (
    room_id         TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    membership      TEXT    NOT NULL CHECK (membership IN ('join', 'invite', 'knock', 'leave', 'ban')),
    stream_ordering INTEGER NOT NULL,
    is_local        INTEGER NOT NULL CHECK (is_local IN (0, 1)),
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX room_members_user ON room_members (user_id);

-- The device-list stream: every change that can alter what some local user
-- must encrypt for is a position. kind is 'device' (a user's devices, keys or
-- cross-signing keys changed: user_id is that user), 'membership' (user_id's
-- membership of room_id changed in an encrypted room) or 'encryption' (room_id
-- became encrypted). Writers take positions in their BEGIN IMMEDIATE
-- transactions on the one writer connection, one at a time, so positions
-- commit in order and a reader that saw position P never misses a later
-- commit below P. AUTOINCREMENT keeps pruned positions from being handed out
-- again, even when pruning empties the table.
CREATE TABLE device_list_stream (
    pos        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('device', 'membership', 'encryption')),
    user_id    TEXT,
    room_id    TEXT,
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX device_list_stream_room ON device_list_stream (room_id, pos) WHERE room_id IS NOT NULL;
CREATE INDEX device_list_stream_user ON device_list_stream (user_id, pos) WHERE user_id IS NOT NULL;
CREATE INDEX device_list_stream_created_at ON device_list_stream (created_at);

-- Positions at or below pruned_below were pruned: a since older than that
-- cannot be answered exactly and falls back to everyone who shares a room.
ALTER TABLE meta ADD COLUMN device_list_pruned_below INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE meta DROP COLUMN device_list_pruned_below;
DROP TABLE device_list_stream;
DROP TABLE room_members;
DROP TABLE encrypted_rooms;
DROP TABLE cross_signing_keys;
ALTER TABLE devices DROP COLUMN keys;
