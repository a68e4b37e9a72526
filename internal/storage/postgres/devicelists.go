package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// deviceListLockID is the transaction-scoped advisory lock every writer of
// the device-list stream takes before taking a position, so positions commit
// in order (invariant 3 for this stream). Device-list changes are rare next
// to to-device traffic, so one lock costs nothing measurable. Lock order: a
// transaction takes any devices row lock first, then this lock, then the
// rows of the other device-list tables.
const deviceListLockID int64 = 0x746f6465766c6973 // "todevlis"

func (t deviceTx) LockStream(ctx context.Context) error {
	if _, err := t.tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
		return fmt.Errorf("locking the device-list stream: %w", err)
	}
	return nil
}

func (db *DB) notifyKeys(ctx context.Context, tx pgx.Tx, keys []wakeup.Key) error {
	if len(keys) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	db.queueNotify(b, keys)
	return tx.SendBatch(ctx, b).Close()
}

// UpsertMemberships is one statement: old reads the rows as they were
// before it; up applies only updates newer than the stored stream ordering.
func (t deviceTx) UpsertMemberships(ctx context.Context, roomID string, ms []devicelists.Membership) ([]devicelists.MembershipChange, error) {
	users := make([]string, len(ms))
	memberships := make([]string, len(ms))
	orderings := make([]int64, len(ms))
	locals := make([]bool, len(ms))
	for i, m := range ms {
		users[i], memberships[i], orderings[i], locals[i] = m.UserID, m.Membership, m.StreamOrdering, m.Local
	}
	rows, err := t.tx.Query(ctx, `
		WITH input AS (
			SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bool[]) AS i(user_id, membership, so, is_local)
		), old AS (
			SELECT m.user_id, m.membership FROM room_members m JOIN input USING (user_id) WHERE m.room_id = $1
		), up AS (
			INSERT INTO room_members (room_id, user_id, membership, stream_ordering, is_local)
			SELECT $1, user_id, membership, so, is_local FROM input
			ON CONFLICT (room_id, user_id) DO UPDATE SET
				membership = excluded.membership, stream_ordering = excluded.stream_ordering, is_local = excluded.is_local
			WHERE room_members.stream_ordering < excluded.stream_ordering
			RETURNING user_id, membership
		)
		SELECT up.user_id, coalesce(old.membership, ''), up.membership FROM up LEFT JOIN old USING (user_id) ORDER BY up.user_id`,
		roomID, users, memberships, orderings, locals)
	if err != nil {
		return nil, fmt.Errorf("storing memberships: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (devicelists.MembershipChange, error) {
		var c devicelists.MembershipChange
		err := r.Scan(&c.UserID, &c.Before, &c.Now)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("storing memberships: %w", err)
	}
	return out, nil
}

// streamStateSQL is sqlstmt.StreamState, which the inbox store runs inside
// /sync's read.
var streamStateSQL = sqlstmt.StreamState.SQL(sqlstmt.Postgres)

func (s *deviceStore) LocalKeys(ctx context.Context, query map[string][]string) ([]devicelists.DeviceKeys, error) {
	var allOf, exUsers, exDevices []string
	for u, devs := range query {
		if len(devs) == 0 {
			allOf = append(allOf, u)
		}
		for _, d := range devs {
			exUsers = append(exUsers, u)
			exDevices = append(exDevices, d)
		}
	}
	rows, err := s.db.pool.Query(ctx, `
		SELECT user_id, device_id, coalesce(display_name, ''), keys FROM devices
		WHERE deleted_at IS NULL
		  AND (user_id = ANY($1) OR (user_id, device_id) IN (SELECT * FROM unnest($2::text[], $3::text[])))
		ORDER BY user_id, device_id`, allOf, exUsers, exDevices)
	if err != nil {
		return nil, fmt.Errorf("reading device keys: %w", err)
	}
	defer rows.Close()
	var out []devicelists.DeviceKeys
	for rows.Next() {
		var d devicelists.DeviceKeys
		var keys []byte
		if err := rows.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &keys); err != nil {
			return nil, err
		}
		if keys != nil {
			d.Keys = keys
		}
		out = append(out, d)
	}
	return out, rows.Err()
}
