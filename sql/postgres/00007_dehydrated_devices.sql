-- +goose Up

-- Dehydrated devices (MSC3814, owned by devicelists): a dehydrated device is
-- a device row like any other (its keys, its inbox, its tombstone when it is
-- deleted), without an access token, whose dehydrated_data holds the
-- device_data its owner uploaded (the JSON object exactly as given). A user
-- has at most one live dehydrated device; uploading another deletes the old
-- one in the same transaction.
ALTER TABLE devices ADD COLUMN dehydrated_data bytea;
CREATE UNIQUE INDEX devices_dehydrated ON devices (user_id)
    WHERE dehydrated_data IS NOT NULL AND deleted_at IS NULL;

-- +goose Down
DROP INDEX devices_dehydrated;
ALTER TABLE devices DROP COLUMN dehydrated_data;
