package sqlstmt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// The statements of devicelists.DehydratedTx and the dehydrated device's
// read (migration 00007): a dehydrated device is a devices row whose
// dehydrated_data is set.

var (
	lockDehydrated = New(`
		SELECT nid, device_id, display_name FROM devices
		WHERE user_id = $1 AND dehydrated_data IS NOT NULL AND deleted_at IS NULL {forupdate}`)
	setDehydrated = New(`UPDATE devices SET dehydrated_data = $2 WHERE nid = $1 AND deleted_at IS NULL`)
	dehydrated    = New(`
		SELECT nid, device_id, display_name, dehydrated_data FROM devices
		WHERE user_id = $1 AND dehydrated_data IS NOT NULL AND deleted_at IS NULL`)
)

func (t DeviceTx) LockDehydrated(ctx context.Context, userID string) (devicelists.Device, bool, error) {
	d := devicelists.Device{UserID: userID}
	var name *string
	err := t.C.QueryRow(ctx, lockDehydrated, userID).Scan(&d.NID, &d.DeviceID, &name)
	if IsNoRows(err) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("looking up the dehydrated device: %w", err)
	}
	if name != nil {
		d.DisplayName = *name
	}
	return d, true, nil
}

// isDehydratedConflict reports whether err is the unique index of one
// dehydrated device per user refusing a second.
func isDehydratedConflict(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505" && pgErr.ConstraintName == "devices_dehydrated"
	}
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed: devices.user_id")
}

func (t DeviceTx) SetDehydrated(ctx context.Context, nid int64, data json.RawMessage) error {
	_, err := t.C.Exec(ctx, setDehydrated, nid, []byte(data))
	if isDehydratedConflict(err) {
		return devicelists.ErrDehydratedRace
	}
	if err != nil {
		return fmt.Errorf("storing the dehydrated device's data: %w", err)
	}
	return nil
}

func (q DeviceReads) Dehydrated(ctx context.Context, userID string) (devicelists.DehydratedDevice, error) {
	d := devicelists.DehydratedDevice{Device: devicelists.Device{UserID: userID}}
	var name *string
	var data []byte
	err := q.C.QueryRow(ctx, dehydrated, userID).Scan(&d.NID, &d.DeviceID, &name, &data)
	if IsNoRows(err) {
		return d, devicelists.ErrNotFound
	}
	if err != nil {
		return d, fmt.Errorf("reading the dehydrated device: %w", err)
	}
	if name != nil {
		d.DisplayName = *name
	}
	d.Data = data
	return d, nil
}
