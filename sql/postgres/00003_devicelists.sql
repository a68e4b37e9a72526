-- +goose Up

-- The device keys a device uploaded (owned by devicelists): the DeviceKeys
-- object exactly as the homeserver gave it.
ALTER TABLE devices ADD COLUMN keys bytea;

-- Cross-signing keys of local and remote users (owned by devicelists).
CREATE TABLE cross_signing_keys (
    user_id  text  NOT NULL,
    key_type text  NOT NULL CHECK (key_type IN ('master', 'self_signing', 'user_signing')),
    key_json bytea NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Rooms the homeserver told us are encrypted. Only encrypted rooms count for
-- device lists: nobody encrypts for the members of a plaintext room.
CREATE TABLE encrypted_rooms (
    room_id text PRIMARY KEY
);

-- Membership of local and remote users, as the homeserver last reported it.
-- stream_ordering is the homeserver's: an update older than the stored one is
-- ignored, so retried or reordered updates are harmless. join, invite and knock
-- count as sharing the room (clients encrypt for invited and knocking users).
CREATE TABLE room_members (
    room_id         text    NOT NULL,
    user_id         text    NOT NULL,
    membership      text    NOT NULL CHECK (membership IN ('join', 'invite', 'knock', 'leave', 'ban')),
    stream_ordering bigint  NOT NULL,
    is_local        boolean NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id);

-- The device-list stream: every change that can alter what some local user
-- must encrypt for is a position. kind is 'device' (a user's devices, keys or
-- cross-signing keys changed: user_id is that user), 'membership' (user_id's
-- membership of room_id changed in an encrypted room) or 'encryption' (room_id
-- became encrypted). Writers take one transaction-scoped advisory lock before
-- taking a position, so positions commit in order and a reader that saw
-- position P never misses a later commit below P.
CREATE TABLE device_list_stream (
    pos        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text   NOT NULL CHECK (kind IN ('device', 'membership', 'encryption')),
    user_id    text,
    room_id    text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_list_stream_room ON device_list_stream (room_id, pos) WHERE room_id IS NOT NULL;
CREATE INDEX device_list_stream_user ON device_list_stream (user_id, pos) WHERE user_id IS NOT NULL;
CREATE INDEX device_list_stream_created_at ON device_list_stream (created_at);

-- Positions at or below pruned_below were pruned: a since older than that
-- cannot be answered exactly and falls back to everyone who shares a room.
ALTER TABLE meta ADD COLUMN device_list_pruned_below bigint NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE meta DROP COLUMN device_list_pruned_below;
DROP TABLE device_list_stream;
DROP TABLE room_members;
DROP TABLE encrypted_rooms;
DROP TABLE cross_signing_keys;
ALTER TABLE devices DROP COLUMN keys;
