package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// deviceStore is the devicelists.DB of SQLite: transactions and the calls
// of one statement. deviceTx holds the statements run inside a
// transaction; devicelists writes the transactions themselves.
type deviceStore struct{ db *DB }

// deviceTx is devicelists.Tx on a SQLite transaction. now is the
// transaction's clock reading (microseconds), so created_at follows stream
// positions and pruning by position prunes by age.
type deviceTx struct {
	tx  *sql.Tx
	now int64
}

var (
	_ devicelists.DB = (*deviceStore)(nil)
	_ devicelists.Tx = deviceTx{}
)

// Write runs fn in the writer's turn (db.write) and wakes this process's
// waiters after the commit: only this process serves the file.
func (s *deviceStore) Write(ctx context.Context, fn func(devicelists.Tx) ([]wakeup.Key, error)) error {
	var wake []wakeup.Key
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		var err error
		wake, err = fn(deviceTx{tx: tx, now: micros(time.Now())})
		return err
	})
	if err != nil {
		return err
	}
	s.db.wake(wake)
	return nil
}

// Read runs fn in a read transaction on a reader connection.
func (s *deviceStore) Read(ctx context.Context, fn func(devicelists.Tx) error) error {
	return s.db.read(ctx, func(tx *sql.Tx) error { return fn(deviceTx{tx: tx, now: micros(time.Now())}) })
}

// TokenTaken needs no unique index to be right: writers take turns, so
// nobody takes the token between the check and the write.
func (t deviceTx) TokenTaken(ctx context.Context, tokenHash []byte, userID, deviceID string) (bool, error) {
	var taken bool
	if err := t.tx.QueryRowContext(ctx, `
		SELECT EXISTS (SELECT 1 FROM devices
			WHERE token_hash = ? AND NOT (user_id = ? AND device_id = ?))`,
		tokenHash, userID, deviceID).Scan(&taken); err != nil {
		return false, fmt.Errorf("checking the token is free: %w", err)
	}
	return taken, nil
}

func (t deviceTx) LiveDevice(ctx context.Context, userID, deviceID string) (devicelists.StoredDevice, bool, error) {
	var d devicelists.StoredDevice
	var name sql.NullString
	err := t.tx.QueryRowContext(ctx, `
		SELECT nid, display_name, keys FROM devices
		WHERE user_id = ? AND device_id = ? AND deleted_at IS NULL`,
		userID, deviceID).Scan(&d.NID, &name, &d.Keys)
	if errors.Is(err, sql.ErrNoRows) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("looking up device: %w", err)
	}
	if name.Valid {
		d.DisplayName = &name.String
	}
	return d, true, nil
}

// UpsertDevice inserts or updates as LiveDevice found: with writers taking
// turns nothing can come between the two, so "created" needs no trick like
// PostgreSQL's xmax. Keys are stored byte for byte, so a re-upload of the
// same object is recognised as no change.
func (t deviceTx) UpsertDevice(ctx context.Context, p devicelists.PutDevice, old *devicelists.StoredDevice) (devicelists.StoredDevice, bool, error) {
	var token, name any // NULL unless given
	if p.TokenHash != nil {
		token = p.TokenHash
	}
	if p.DisplayName != nil {
		name = *p.DisplayName
	}
	keys := []byte(p.Keys) // nil binds NULL
	var d devicelists.StoredDevice
	var dn sql.NullString
	if old == nil {
		err := t.tx.QueryRowContext(ctx, `
			INSERT INTO devices (user_id, device_id, token_hash, display_name, keys, created_at)
			VALUES (?, ?, ?, ?, ?, ?)
			RETURNING nid, display_name, keys`,
			p.UserID, p.DeviceID, token, name, keys, t.now).Scan(&d.NID, &dn, &d.Keys)
		if err != nil {
			return d, false, fmt.Errorf("inserting device: %w", err)
		}
	} else {
		d.NID = old.NID
		err := t.tx.QueryRowContext(ctx, `
			UPDATE devices SET
				token_hash = coalesce(?, token_hash),
				display_name = CASE WHEN ? THEN ? ELSE display_name END,
				keys = CASE WHEN ? THEN ? ELSE keys END
			WHERE nid = ?
			RETURNING display_name, keys`,
			token, p.DisplayName != nil, name, p.Keys != nil, keys, d.NID).Scan(&dn, &d.Keys)
		if err != nil {
			return d, false, fmt.Errorf("updating device: %w", err)
		}
	}
	if dn.Valid {
		d.DisplayName = &dn.String
	}
	return d, old == nil, nil
}

func (t deviceTx) TombstoneDevice(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	d := devicelists.Device{UserID: userID, DeviceID: deviceID}
	var name sql.NullString
	err := t.tx.QueryRowContext(ctx, `
		UPDATE devices SET deleted_at = ?, token_hash = NULL
		WHERE user_id = ? AND device_id = ? AND deleted_at IS NULL
		RETURNING nid, display_name`, t.now, userID, deviceID).Scan(&d.NID, &name)
	if errors.Is(err, sql.ErrNoRows) {
		return d, devicelists.ErrNotFound
	}
	if err != nil {
		return d, fmt.Errorf("deleting device: %w", err)
	}
	d.DisplayName = name.String
	return d, nil
}

func (t deviceTx) LiveDeviceKeys(ctx context.Context, userID string) ([]devicelists.DeviceKeys, error) {
	return deviceKeysOf(ctx, t.tx, `
		SELECT device_id, display_name, keys FROM devices
		WHERE user_id = ? AND deleted_at IS NULL AND keys IS NOT NULL`, userID)
}

func (t deviceTx) Head(ctx context.Context, userID string) (int64, error) {
	var head int64
	err := t.tx.QueryRowContext(ctx, `SELECT stream_id FROM device_list_heads WHERE user_id = ?`, userID).Scan(&head)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("reading device-list head: %w", err)
	}
	return head, nil
}

func (t deviceTx) SetHead(ctx context.Context, userID string, pos int64) error {
	if _, err := t.tx.ExecContext(ctx, `
		INSERT INTO device_list_heads (user_id, stream_id) VALUES (?, ?)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`, userID, pos); err != nil {
		return fmt.Errorf("storing device-list head: %w", err)
	}
	return nil
}

const deviceColumns = `nid, user_id, device_id, display_name`

func scanDevice(row interface{ Scan(...any) error }) (devicelists.Device, error) {
	var d devicelists.Device
	var name sql.NullString
	err := row.Scan(&d.NID, &d.UserID, &d.DeviceID, &name)
	if errors.Is(err, sql.ErrNoRows) {
		return d, devicelists.ErrNotFound
	}
	if err != nil {
		return d, fmt.Errorf("reading device: %w", err)
	}
	d.DisplayName = name.String
	return d, nil
}

func (s *deviceStore) DeviceByToken(ctx context.Context, tokenHash []byte) (devicelists.Device, error) {
	return scanDevice(s.db.readers.QueryRowContext(ctx, `
		SELECT `+deviceColumns+` FROM devices
		WHERE token_hash = ? AND deleted_at IS NULL`, tokenHash))
}

func (s *deviceStore) Device(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	return scanDevice(s.db.readers.QueryRowContext(ctx, `
		SELECT `+deviceColumns+` FROM devices
		WHERE user_id = ? AND device_id = ? AND deleted_at IS NULL`, userID, deviceID))
}

func (s *deviceStore) collect(ctx context.Context, query string, args ...any) ([]devicelists.Device, error) {
	rows, err := s.db.readers.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	return out, nil
}

func (s *deviceStore) UserDevices(ctx context.Context, userID string) ([]devicelists.Device, error) {
	return s.collect(ctx, `
		SELECT `+deviceColumns+` FROM devices
		WHERE user_id = ? AND deleted_at IS NULL ORDER BY device_id`, userID)
}

func (s *deviceStore) Tombstones(ctx context.Context, limit int) ([]devicelists.Device, error) {
	return s.collect(ctx, `
		SELECT `+deviceColumns+` FROM devices
		WHERE deleted_at IS NOT NULL ORDER BY nid LIMIT ?`, limit)
}

func (s *deviceStore) ForgetTombstone(ctx context.Context, nid int64) error {
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE nid = ? AND deleted_at IS NOT NULL`, nid)
		return err
	})
	if err != nil {
		return fmt.Errorf("forgetting tombstone: %w", err)
	}
	return nil
}
