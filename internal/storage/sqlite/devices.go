package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// deviceStore is the devicelists.DB of SQLite: transactions and the calls
// of one statement. deviceTx holds the statements run inside a
// transaction; devicelists writes the transactions themselves.
type deviceStore struct {
	sqlstmt.DeviceReads
	db *DB
}

func newDeviceStore(db *DB) *deviceStore {
	return &deviceStore{DeviceReads: sqlstmt.DeviceReads{C: sqlstmt.SQLiteConn{R: db.readers}}, db: db}
}

// deviceTx is devicelists.Tx on a SQLite transaction: the shared
// statements and those written for SQLite here. now is the transaction's
// clock reading (microseconds, what the statements' {now} binds), so
// created_at follows stream positions and pruning by position prunes by
// age.
type deviceTx struct {
	sqlstmt.DeviceTx
	tx  *sql.Tx
	now int64
}

func newDeviceTx(tx *sql.Tx) deviceTx {
	now := micros(time.Now())
	return deviceTx{DeviceTx: sqlstmt.DeviceTx{C: sqlstmt.SQLiteConn{R: tx, Now: now}}, tx: tx, now: now}
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
		wake, err = fn(newDeviceTx(tx))
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
	return s.db.read(ctx, func(tx *sql.Tx) error { return fn(newDeviceTx(tx)) })
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
