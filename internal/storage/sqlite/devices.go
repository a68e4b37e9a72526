package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

type deviceStore struct{ db *DB }

// PutDevice looks the live device up and then inserts or updates it. With
// writers taking turns nothing can come between the two, so "created" needs
// no trick like PostgreSQL's xmax. A new device, or a change of its keys or
// display name, is a device-list change of its user.
func (s *deviceStore) PutDevice(ctx context.Context, p devicelists.PutDevice) (devicelists.Device, bool, error) {
	var d devicelists.Device
	var created bool
	var wake []wakeup.Key
	var token, name any // NULL unless given
	if p.TokenHash != nil {
		token = p.TokenHash
	}
	if p.DisplayName != nil {
		name = *p.DisplayName
	}
	// Nil binds NULL. Keys are stored byte for byte, so a re-upload of the
	// same object is recognised as no change.
	keys := []byte(p.Keys)
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		d, created, wake = devicelists.Device{UserID: p.UserID, DeviceID: p.DeviceID}, false, nil
		now := micros(time.Now())
		if token != nil {
			// Writers take turns, so nobody takes the token between the
			// check and the write.
			var taken bool
			if err := tx.QueryRowContext(ctx, `
				SELECT EXISTS (SELECT 1 FROM devices
					WHERE token_hash = ? AND NOT (user_id = ? AND device_id = ?))`,
				token, p.UserID, p.DeviceID).Scan(&taken); err != nil {
				return fmt.Errorf("checking the token is free: %w", err)
			}
			if taken {
				return devicelists.ErrTokenInUse
			}
		}
		var dn, oldName sql.NullString
		var oldKeys, nowKeys []byte
		err := tx.QueryRowContext(ctx, `
			SELECT nid, display_name, keys FROM devices
			WHERE user_id = ? AND device_id = ? AND deleted_at IS NULL`,
			p.UserID, p.DeviceID).Scan(&d.NID, &oldName, &oldKeys)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			created = true
			err = tx.QueryRowContext(ctx, `
				INSERT INTO devices (user_id, device_id, token_hash, display_name, keys, created_at)
				VALUES (?, ?, ?, ?, ?, ?)
				RETURNING nid, display_name, keys`,
				p.UserID, p.DeviceID, token, name, keys, now).Scan(&d.NID, &dn, &nowKeys)
			if err != nil {
				return fmt.Errorf("inserting device: %w", err)
			}
		case err != nil:
			return fmt.Errorf("looking up device: %w", err)
		default:
			err = tx.QueryRowContext(ctx, `
				UPDATE devices SET
					token_hash = coalesce(?, token_hash),
					display_name = CASE WHEN ? THEN ? ELSE display_name END,
					keys = CASE WHEN ? THEN ? ELSE keys END
				WHERE nid = ?
				RETURNING display_name, keys`,
				token, p.DisplayName != nil, name, p.Keys != nil, keys, d.NID).Scan(&dn, &nowKeys)
			if err != nil {
				return fmt.Errorf("updating device: %w", err)
			}
		}
		d.DisplayName = dn.String
		changed := created ||
			(p.Keys != nil && !bytes.Equal(oldKeys, p.Keys)) ||
			(p.DisplayName != nil && (!oldName.Valid || oldName.String != *p.DisplayName))
		if !changed {
			return nil
		}
		wake, err = s.localDeviceChanged(ctx, tx, now, p.UserID, p.Update(d.DisplayName, nowKeys))
		return err
	})
	if err != nil {
		return devicelists.Device{}, false, err
	}
	s.db.wake(wake)
	return d, created, nil
}

// DeleteDevice tombstones the device; a deleted device is a device-list
// change of its user.
func (s *deviceStore) DeleteDevice(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	d := devicelists.Device{UserID: userID, DeviceID: deviceID}
	var wake []wakeup.Key
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		wake = nil
		now := micros(time.Now())
		var name sql.NullString
		err := tx.QueryRowContext(ctx, `
			UPDATE devices SET deleted_at = ?, token_hash = NULL
			WHERE user_id = ? AND device_id = ? AND deleted_at IS NULL
			RETURNING nid, display_name`, now, userID, deviceID).Scan(&d.NID, &name)
		if errors.Is(err, sql.ErrNoRows) {
			return devicelists.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("deleting device: %w", err)
		}
		d.DisplayName = name.String
		if wake, err = s.localDeviceChanged(ctx, tx, now, userID, devicelists.DeviceUpdate{DeviceID: deviceID, Deleted: true}); err != nil {
			return err
		}
		// Its waiters find the device gone; sends after the commit skip it.
		wake = append(wake, wakeup.DeviceKey(d.NID))
		return nil
	})
	if err != nil {
		return devicelists.Device{}, err
	}
	s.db.wake(wake)
	return d, nil
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
