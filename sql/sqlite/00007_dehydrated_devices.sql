-- +goose Up

-- The SQLite twin of postgres/00007_dehydrated_devices.sql (see there for
-- its meaning).
ALTER TABLE devices ADD COLUMN dehydrated_data BLOB;
CREATE UNIQUE INDEX devices_dehydrated ON devices (user_id)
    WHERE dehydrated_data IS NOT NULL AND deleted_at IS NULL;

-- +goose Down
DROP INDEX devices_dehydrated;
ALTER TABLE devices DROP COLUMN dehydrated_data;
