-- +goose Up

-- The SQLite twin of postgres/00006_cross_signing_signatures.sql (see there
-- for the meaning of each table); times are integer microseconds.
CREATE TABLE cross_signing_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    target_public  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE cross_signing_signature_stream (
    pos            INTEGER PRIMARY KEY REFERENCES device_list_stream (pos) ON DELETE CASCADE,
    viewer_user_id TEXT    NOT NULL,
    target_user_id TEXT    NOT NULL
) STRICT;
CREATE INDEX cross_signing_signature_stream_viewer ON cross_signing_signature_stream (viewer_user_id, pos);

CREATE TABLE cross_signing_replaceable (
    user_id  TEXT    PRIMARY KEY,
    until_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- +goose Down
DROP TABLE cross_signing_replaceable;
DROP TABLE cross_signing_signature_stream;
DROP TABLE cross_signing_signatures;
