-- +goose Up

-- Signatures uploaded through POST /keys/signatures/upload (owned by
-- devicelists): a device's keys signed by its user's self-signing key, a
-- master key signed by its user's devices, another user's master key signed
-- by the signer's user-signing key. target_key_id is the device id, or the
-- master key's public key; target_public is the ed25519 key that was signed
-- (the device's own ed25519 key, or the master key), so a signature on a
-- device or master key that has since been replaced is no longer shown.
-- A signature by the key's owner is shown to everyone, one by another user
-- only to that user (as Synapse does).
CREATE TABLE cross_signing_signatures (
    target_user_id text NOT NULL,
    target_key_id  text NOT NULL,
    signer_user_id text NOT NULL,
    signer_key_id  text NOT NULL,
    target_public  text NOT NULL,
    signature      text NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The device-list positions of new signatures by a user on another user's
-- key: only the signer sees the target as changed. The position itself is a
-- 'device' row without a user (no one else is told); pruning the stream
-- deletes these rows with it.
CREATE TABLE cross_signing_signature_stream (
    pos            bigint PRIMARY KEY REFERENCES device_list_stream (pos) ON DELETE CASCADE,
    viewer_user_id text   NOT NULL,
    target_user_id text   NOT NULL
);
CREATE INDEX cross_signing_signature_stream_viewer ON cross_signing_signature_stream (viewer_user_id, pos);

-- Users allowed to replace their cross-signing keys without user-interactive
-- auth until a time (POST …/cross_signing/replace_allowed of the internal
-- API; Synapse's master_key_replaceable_until).
CREATE TABLE cross_signing_replaceable (
    user_id  text        PRIMARY KEY,
    until_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE cross_signing_replaceable;
DROP TABLE cross_signing_signature_stream;
DROP TABLE cross_signing_signatures;
