package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// deviceStore is the devicelists.DB of PostgreSQL: transactions and the
// calls of one statement. deviceTx holds the statements run inside a
// transaction; devicelists writes the transactions themselves.
type deviceStore struct{ db *DB }

// deviceTx is devicelists.Tx on a pgx transaction.
type deviceTx struct{ tx pgx.Tx }

var (
	_ devicelists.DB = (*deviceStore)(nil)
	_ devicelists.Tx = deviceTx{}
)

// Write sends the NOTIFYs inside the transaction, so other replicas hear of
// it as it commits, and wakes this replica's waiters after.
func (s *deviceStore) Write(ctx context.Context, fn func(devicelists.Tx) ([]wakeup.Key, error)) error {
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if wake, err = fn(deviceTx{tx}); err != nil {
			return err
		}
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return err
	}
	s.db.wakeLocal(wake)
	return nil
}

// Read runs fn in a read-only repeatable-read snapshot.
func (s *deviceStore) Read(ctx context.Context, fn func(devicelists.Tx) error) error {
	return s.db.readTx(ctx, func(tx pgx.Tx) error { return fn(deviceTx{tx}) })
}

func (t deviceTx) TokenTaken(ctx context.Context, tokenHash []byte, userID, deviceID string) (bool, error) {
	var taken bool
	if err := t.tx.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM devices
			WHERE token_hash = $1 AND NOT (user_id = $2 AND device_id = $3))`,
		tokenHash, userID, deviceID).Scan(&taken); err != nil {
		return false, fmt.Errorf("checking the token is free: %w", err)
	}
	return taken, nil
}

func (t deviceTx) LiveDevice(ctx context.Context, userID, deviceID string) (devicelists.StoredDevice, bool, error) {
	var d devicelists.StoredDevice
	err := t.tx.QueryRow(ctx, `
		SELECT nid, display_name, keys FROM devices
		WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL FOR UPDATE`,
		userID, deviceID).Scan(&d.NID, &d.DisplayName, &d.Keys)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("looking up device: %w", err)
	}
	return d, true, nil
}

// UpsertDevice is one upsert whatever old says: "created" comes from xmax,
// and two devices given one token at once are stopped by the unique index.
func (t deviceTx) UpsertDevice(ctx context.Context, p devicelists.PutDevice, _ *devicelists.StoredDevice) (devicelists.StoredDevice, bool, error) {
	var d devicelists.StoredDevice
	var created bool
	var keys []byte
	if p.Keys != nil {
		keys = p.Keys
	}
	err := t.tx.QueryRow(ctx, `
		INSERT INTO devices (user_id, device_id, token_hash, display_name, keys)
		VALUES ($1, $2, $3, $4, $6)
		ON CONFLICT (user_id, device_id) WHERE deleted_at IS NULL DO UPDATE SET
			token_hash = coalesce(excluded.token_hash, devices.token_hash),
			display_name = CASE WHEN $5 THEN excluded.display_name ELSE devices.display_name END,
			keys = CASE WHEN $7 THEN excluded.keys ELSE devices.keys END
		RETURNING nid, display_name, keys, xmax = 0`,
		p.UserID, p.DeviceID, p.TokenHash, p.DisplayName, p.DisplayName != nil, keys, p.Keys != nil,
	).Scan(&d.NID, &d.DisplayName, &d.Keys, &created)
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "devices_token_hash" {
		return d, false, devicelists.ErrTokenInUse
	}
	return d, created, err
}

func (t deviceTx) TombstoneDevice(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	d := devicelists.Device{UserID: userID, DeviceID: deviceID}
	var name *string
	err := t.tx.QueryRow(ctx, `
		UPDATE devices SET deleted_at = now(), token_hash = NULL
		WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL
		RETURNING nid, display_name`, userID, deviceID).Scan(&d.NID, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, devicelists.ErrNotFound
	}
	if name != nil {
		d.DisplayName = *name
	}
	return d, err
}

func (t deviceTx) LiveDeviceKeys(ctx context.Context, userID string) ([]devicelists.DeviceKeys, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT device_id, coalesce(display_name, ''), keys FROM devices
		WHERE user_id = $1 AND deleted_at IS NULL AND keys IS NOT NULL`, userID)
	if err != nil {
		return nil, err
	}
	return collectDeviceKeys(rows, userID)
}

func (t deviceTx) Head(ctx context.Context, userID string) (int64, error) {
	var head int64
	err := t.tx.QueryRow(ctx, `SELECT stream_id FROM device_list_heads WHERE user_id = $1`, userID).Scan(&head)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("reading device-list head: %w", err)
	}
	return head, nil
}

func (t deviceTx) SetHead(ctx context.Context, userID string, pos int64) error {
	if _, err := t.tx.Exec(ctx, `
		INSERT INTO device_list_heads (user_id, stream_id) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`, userID, pos); err != nil {
		return fmt.Errorf("storing device-list head: %w", err)
	}
	return nil
}

func scanDevice(row pgx.Row) (devicelists.Device, error) {
	var d devicelists.Device
	var name *string
	err := row.Scan(&d.NID, &d.UserID, &d.DeviceID, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, devicelists.ErrNotFound
	}
	if name != nil {
		d.DisplayName = *name
	}
	return d, err
}

func (s *deviceStore) DeviceByToken(ctx context.Context, tokenHash []byte) (devicelists.Device, error) {
	return scanDevice(s.db.pool.QueryRow(ctx, `
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE token_hash = $1 AND deleted_at IS NULL`, tokenHash))
}

func (s *deviceStore) Device(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	return scanDevice(s.db.pool.QueryRow(ctx, `
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL`, userID, deviceID))
}

func (s *deviceStore) collect(ctx context.Context, sql string, args ...any) ([]devicelists.Device, error) {
	rows, err := s.db.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []devicelists.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *deviceStore) UserDevices(ctx context.Context, userID string) ([]devicelists.Device, error) {
	return s.collect(ctx, `
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE user_id = $1 AND deleted_at IS NULL ORDER BY device_id`, userID)
}

func (s *deviceStore) Tombstones(ctx context.Context, limit int) ([]devicelists.Device, error) {
	return s.collect(ctx, `
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE deleted_at IS NOT NULL ORDER BY nid LIMIT $1`, limit)
}

func (s *deviceStore) ForgetTombstone(ctx context.Context, nid int64) error {
	_, err := s.db.pool.Exec(ctx, `DELETE FROM devices WHERE nid = $1 AND deleted_at IS NOT NULL`, nid)
	return err
}
