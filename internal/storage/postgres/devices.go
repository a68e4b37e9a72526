package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

type deviceStore struct{ db *DB }

// PutDevice creates or updates a device. A new device, or a change of its
// keys or display name, is a device-list change of its user.
func (s *deviceStore) PutDevice(ctx context.Context, p devicelists.PutDevice) (devicelists.Device, bool, error) {
	d := devicelists.Device{UserID: p.UserID, DeviceID: p.DeviceID}
	var created bool
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		created, wake = false, nil
		if p.TokenHash != nil {
			// Two devices given one token at once: the unique index stops
			// the second (mapped to ErrTokenInUse below).
			var taken bool
			if err := tx.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM devices
					WHERE token_hash = $1 AND NOT (user_id = $2 AND device_id = $3))`,
				p.TokenHash, p.UserID, p.DeviceID).Scan(&taken); err != nil {
				return fmt.Errorf("checking the token is free: %w", err)
			}
			if taken {
				return devicelists.ErrTokenInUse
			}
		}
		var oldName *string
		var oldKeys []byte
		err := tx.QueryRow(ctx, `
			SELECT display_name, keys FROM devices
			WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL FOR UPDATE`,
			p.UserID, p.DeviceID).Scan(&oldName, &oldKeys)
		existed := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var keys []byte
		if p.Keys != nil {
			keys = p.Keys
		}
		var name *string
		var nowKeys []byte
		err = tx.QueryRow(ctx, `
			INSERT INTO devices (user_id, device_id, token_hash, display_name, keys)
			VALUES ($1, $2, $3, $4, $6)
			ON CONFLICT (user_id, device_id) WHERE deleted_at IS NULL DO UPDATE SET
				token_hash = coalesce(excluded.token_hash, devices.token_hash),
				display_name = CASE WHEN $5 THEN excluded.display_name ELSE devices.display_name END,
				keys = CASE WHEN $7 THEN excluded.keys ELSE devices.keys END
			RETURNING nid, display_name, keys, xmax = 0`,
			p.UserID, p.DeviceID, p.TokenHash, p.DisplayName, p.DisplayName != nil, keys, p.Keys != nil).Scan(&d.NID, &name, &nowKeys, &created)
		if err != nil {
			return err
		}
		if name != nil {
			d.DisplayName = *name
		}
		changed := !existed ||
			(p.Keys != nil && !bytes.Equal(oldKeys, p.Keys)) ||
			(p.DisplayName != nil && (oldName == nil || *oldName != *p.DisplayName))
		if !changed {
			return nil
		}
		if wake, err = s.localDeviceChanged(ctx, tx, p.UserID, p.Update(d.DisplayName, nowKeys)); err != nil {
			return err
		}
		return notifyKeys(ctx, tx, wake)
	})
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "devices_token_hash" {
		err = devicelists.ErrTokenInUse
	}
	if err != nil {
		return devicelists.Device{}, false, err
	}
	s.db.wakeLocal(wake)
	return d, created, nil
}

func (s *deviceStore) DeleteDevice(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	d := devicelists.Device{UserID: userID, DeviceID: deviceID}
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		wake = nil
		var name *string
		err := tx.QueryRow(ctx, `
			UPDATE devices SET deleted_at = now(), token_hash = NULL
			WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL
			RETURNING nid, display_name`, userID, deviceID).Scan(&d.NID, &name)
		if errors.Is(err, pgx.ErrNoRows) {
			return devicelists.ErrNotFound
		}
		if err != nil {
			return err
		}
		if name != nil {
			d.DisplayName = *name
		}
		wake, err = s.localDeviceChanged(ctx, tx, userID, devicelists.DeviceUpdate{DeviceID: deviceID, Deleted: true})
		if err != nil {
			return err
		}
		wake = append(wake, wakeup.DeviceKey(d.NID))
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return devicelists.Device{}, err
	}
	s.db.wakeLocal(wake)
	return d, nil
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
