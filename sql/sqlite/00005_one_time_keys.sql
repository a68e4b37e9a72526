-- +goose Up

-- The SQLite twin of postgres/00005_one_time_keys.sql. A claim deletes one
-- row it chose in the single writer's turn, so each one-time key is handed
-- out exactly once. STRICT has no boolean type: used is 0 or 1.
CREATE TABLE one_time_keys (
    user_id    TEXT    NOT NULL,
    device_nid INTEGER NOT NULL,
    algorithm  TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    key_json   BLOB    NOT NULL,
    PRIMARY KEY (device_nid, algorithm, key_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE fallback_keys (
    user_id    TEXT    NOT NULL,
    device_nid INTEGER NOT NULL,
    algorithm  TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    key_json   BLOB    NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1)),
    PRIMARY KEY (device_nid, algorithm)
) STRICT, WITHOUT ROWID;

-- +goose Down
DROP TABLE fallback_keys;
DROP TABLE one_time_keys;
