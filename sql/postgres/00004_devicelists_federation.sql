-- +goose Up

-- The federation half of device lists (owned by devicelists): what this
-- server tells other servers about its users' devices, and what it keeps of
-- other servers' users.

-- ---------------------------------------------------------------------------
-- Outbound.
-- ---------------------------------------------------------------------------

-- The stream_id of each local user's latest m.device_list_update: the
-- device-list stream position of that device change. The next update of the
-- user names it as its prev_id, and GET /user/devices serves it as stream_id.
-- A remote server knows a prev_id only if it saw exactly that state (the
-- update, or a snapshot at it), so a change it missed — lost on the way,
-- dropped after the TTL, or made while it shared no room with the user —
-- always shows as a gap and makes it resync. One row per local user who ever
-- changed a device; updated in the transaction that takes the position.
CREATE TABLE device_list_heads (
    user_id   text   PRIMARY KEY,
    stream_id bigint NOT NULL
);

-- m.device_list_update and m.signing_key_update EDUs queued for other
-- servers (drained by federation, like todevice_outbox). Rows are written in
-- the transaction of the change, which holds the device-list stream lock
-- (every writer takes it), so a destination's positions commit in order
-- (invariant 3). The sender and the feed delete exactly the rows they sent;
-- rows older than the federation TTL expire.
CREATE TABLE device_list_outbox (
    destination text   NOT NULL,
    pos         bigint GENERATED ALWAYS AS IDENTITY,
    edu_type    text   NOT NULL,
    -- The complete EDU, built in the transaction of the change.
    edu         bytea  NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, pos)
);
CREATE INDEX device_list_outbox_enqueued_at ON device_list_outbox (enqueued_at);

-- ---------------------------------------------------------------------------
-- Inbound: the cache of remote users' device lists.
-- ---------------------------------------------------------------------------

-- One row per remote user who shares an encrypted room with a local user
-- (created when they start sharing, deleted with the user's devices and
-- cross-signing keys when no local user shares a room with them any more).
--   stream_id     the stream_id of the state the cache holds (0: none yet);
--   applied_ids   the last few update stream_ids applied on top of a
--                 snapshot: the prev_ids besides stream_id that are known;
--   stale         the cache cannot be trusted: a resync is due at retry_at;
--   seen_stream_id the newest stream_id of an update that could not be
--                 applied: a snapshot older than it leaves the user stale;
--   failures      consecutive failed resyncs (the exponent of the backoff).
CREATE TABLE remote_device_lists (
    user_id        text     PRIMARY KEY,
    stream_id      bigint   NOT NULL DEFAULT 0,
    applied_ids    bigint[] NOT NULL DEFAULT '{}',
    stale          boolean  NOT NULL DEFAULT true,
    seen_stream_id bigint   NOT NULL DEFAULT 0,
    failures       integer  NOT NULL DEFAULT 0,
    retry_at       timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX remote_device_lists_due ON remote_device_lists (retry_at) WHERE stale;

-- The cached devices of remote users (cross-signing keys go to
-- cross_signing_keys, like local users').
CREATE TABLE remote_devices (
    user_id      text NOT NULL,
    device_id    text NOT NULL,
    keys         bytea,
    display_name text,
    PRIMARY KEY (user_id, device_id)
);

-- Remote users who already share an encrypted room with a local user are
-- tracked from now on: the resync worker fetches them.
INSERT INTO remote_device_lists (user_id, retry_at)
SELECT DISTINCT r.user_id, now() FROM room_members r
JOIN encrypted_rooms e ON e.room_id = r.room_id
JOIN room_members l ON l.room_id = r.room_id
WHERE NOT r.is_local AND r.membership IN ('join', 'invite', 'knock')
  AND l.is_local AND l.membership IN ('join', 'invite', 'knock');

-- +goose Down
DROP TABLE remote_devices;
DROP TABLE remote_device_lists;
DROP TABLE device_list_outbox;
DROP TABLE device_list_heads;
