-- +goose Up

-- One-time keys of local devices (owned by devicelists): each is handed out
-- by /keys/claim exactly once, by deleting its row. A claim deletes one row
-- it chose with FOR UPDATE SKIP LOCKED, so concurrent claimers on any
-- replica take different keys. Keyed by the device's incarnation (nid): a
-- re-created device starts with none; deleting a device deletes its keys in
-- the same transaction.
CREATE TABLE one_time_keys (
    user_id    text   NOT NULL,
    device_nid bigint NOT NULL,
    algorithm  text   NOT NULL,
    key_id     text   NOT NULL,
    -- The key object exactly as uploaded (compact JSON), as claims return it.
    key_json   bytea  NOT NULL,
    PRIMARY KEY (device_nid, algorithm, key_id)
);

-- Fallback keys (owned by devicelists): one per device and algorithm,
-- handed out when the device has no one-time key of the algorithm left and
-- then marked used; it stays available until the device replaces it.
CREATE TABLE fallback_keys (
    user_id    text    NOT NULL,
    device_nid bigint  NOT NULL,
    algorithm  text    NOT NULL,
    key_id     text    NOT NULL,
    key_json   bytea   NOT NULL,
    used       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (device_nid, algorithm)
);

-- +goose Down
DROP TABLE fallback_keys;
DROP TABLE one_time_keys;
