package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// deviceStore is the devicelists.DB of PostgreSQL: transactions and the
// calls of one statement. deviceTx holds the statements run inside a
// transaction; devicelists writes the transactions themselves.
type deviceStore struct {
	sqlstmt.DeviceReads
	db *DB
}

func newDeviceStore(db *DB) *deviceStore {
	return &deviceStore{DeviceReads: sqlstmt.DeviceReads{C: sqlstmt.PgxConn{R: db.pool}}, db: db}
}

// deviceTx is devicelists.Tx on a pgx transaction: the shared statements
// and those written for PostgreSQL here.
type deviceTx struct {
	sqlstmt.DeviceTx
	tx pgx.Tx
}

func newDeviceTx(tx pgx.Tx) deviceTx {
	return deviceTx{DeviceTx: sqlstmt.DeviceTx{C: sqlstmt.PgxConn{R: tx}}, tx: tx}
}

var (
	_ devicelists.DB = (*deviceStore)(nil)
	_ devicelists.Tx = deviceTx{}
)

// Write sends the NOTIFYs inside the transaction, so other replicas hear of
// it as it commits, and wakes this replica's waiters after — after a
// failure too, when the commit may have happened all the same (a lost
// connection at COMMIT): the listener drops this replica's own
// notifications, so the local wake-up is the only one it gets.
func (s *deviceStore) Write(ctx context.Context, fn func(devicelists.Tx) ([]wakeup.Key, error)) error {
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if wake, err = fn(newDeviceTx(tx)); err != nil {
			return err
		}
		return s.db.notifyKeys(ctx, tx, wake)
	})
	s.db.wakeLocal(wake)
	return err
}

// Read runs fn in a read-only repeatable-read snapshot.
func (s *deviceStore) Read(ctx context.Context, fn func(devicelists.Tx) error) error {
	return s.db.readTx(ctx, func(tx pgx.Tx) error { return fn(newDeviceTx(tx)) })
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

func (s *deviceStore) ForgetTombstone(ctx context.Context, nid int64) error {
	_, err := s.db.pool.Exec(ctx, `DELETE FROM devices WHERE nid = $1 AND deleted_at IS NOT NULL`, nid)
	return err
}
