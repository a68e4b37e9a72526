package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// deviceListLockID is the transaction-scoped advisory lock every writer of
// the device-list stream takes before taking a position, so positions commit
// in order (invariant 3 for this stream). Device-list changes are rare next
// to to-device traffic, so one lock costs nothing measurable. Lock order: a
// transaction takes any devices row lock first, then this lock, then the
// rows of the other device-list tables.
const deviceListLockID int64 = 0x746f6465766c6973 // "todevlis"

const sharingSQL = `('join', 'invite', 'knock')`

func (t deviceTx) LockStream(ctx context.Context) error {
	if _, err := t.tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
		return fmt.Errorf("locking the device-list stream: %w", err)
	}
	return nil
}

func (t deviceTx) AppendStream(ctx context.Context, kind, userID, roomID string) (int64, error) {
	var u, r *string
	if userID != "" {
		u = &userID
	}
	if roomID != "" {
		r = &roomID
	}
	var pos int64
	if err := t.tx.QueryRow(ctx, `INSERT INTO device_list_stream (kind, user_id, room_id) VALUES ($1, $2, $3) RETURNING pos`,
		kind, u, r).Scan(&pos); err != nil {
		return 0, fmt.Errorf("appending to the device-list stream: %w", err)
	}
	return pos, nil
}

// strings runs a query of one text column and returns its values.
func (t deviceTx) strings(ctx context.Context, what, sql string, args ...any) ([]string, error) {
	rows, err := t.tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

func (t deviceTx) LocalSharers(ctx context.Context, userID string) ([]string, error) {
	return t.strings(ctx, "finding users sharing a room", `
		SELECT DISTINCT m2.user_id FROM room_members m1
		JOIN encrypted_rooms e ON e.room_id = m1.room_id
		JOIN room_members m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership IN `+sharingSQL+`
		  AND m2.membership IN `+sharingSQL+` AND m2.is_local`, userID)
}

func (t deviceTx) RoomLocals(ctx context.Context, roomID string) ([]string, error) {
	return t.strings(ctx, "finding local members", `SELECT user_id FROM room_members WHERE room_id = $1 AND is_local`, roomID)
}

func notifyKeys(ctx context.Context, tx pgx.Tx, keys []wakeup.Key) error {
	if len(keys) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	queueNotify(b, keys)
	return tx.SendBatch(ctx, b).Close()
}

// PutCrossSigningKey's WHERE makes storing the same key again touch no row.
func (t deviceTx) PutCrossSigningKey(ctx context.Context, userID, keyType string, key json.RawMessage) (bool, error) {
	tag, err := t.tx.Exec(ctx, `
		INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json
		WHERE cross_signing_keys.key_json <> excluded.key_json`, userID, keyType, []byte(key))
	if err != nil {
		return false, fmt.Errorf("storing %s key: %w", keyType, err)
	}
	return tag.RowsAffected() > 0, nil
}

func (t deviceTx) MarkRoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	tag, err := t.tx.Exec(ctx, `INSERT INTO encrypted_rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING`, roomID)
	if err != nil {
		return false, fmt.Errorf("recording encryption: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

func (t deviceTx) RoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	var encrypted bool
	if err := t.tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = $1)`, roomID).Scan(&encrypted); err != nil {
		return false, fmt.Errorf("checking room encryption: %w", err)
	}
	return encrypted, nil
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

func (t deviceTx) PruneOldest(ctx context.Context, cutoff time.Time, limit int) (int, int64, error) {
	rows, err := t.tx.Query(ctx, `
		DELETE FROM device_list_stream WHERE pos = ANY (ARRAY (
			SELECT pos FROM (SELECT pos, created_at FROM device_list_stream ORDER BY pos LIMIT $2) oldest
			WHERE created_at < $1))
		RETURNING pos`, cutoff, limit)
	if err != nil {
		return 0, 0, err
	}
	deleted, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(deleted) == 0 {
		return 0, 0, err
	}
	return len(deleted), slices.Max(deleted), nil
}

func (t deviceTx) RaisePrunedBelow(ctx context.Context, pos int64) error {
	_, err := t.tx.Exec(ctx, `UPDATE meta SET device_list_pruned_below = greatest(device_list_pruned_below, $1)`, pos)
	return err
}

// streamStateSQL reads the device-list stream's head (never below the
// pruning point, so positions are never reused) and pruning point. The inbox
// store runs it too, inside /sync's round trip.
const streamStateSQL = `
	SELECT greatest(coalesce((SELECT max(pos) FROM device_list_stream), 0), device_list_pruned_below),
	       device_list_pruned_below
	FROM meta`

func (s *deviceStore) StreamState(ctx context.Context) (devicelists.StreamState, error) {
	var st devicelists.StreamState
	err := s.db.pool.QueryRow(ctx, streamStateSQL).Scan(&st.Head, &st.PrunedBelow)
	return st, err
}

// sharedUsersSQL selects the user $1 and every user sharing an encrypted
// room with them.
const sharedUsersSQL = `
	SELECT $1::text
	UNION
	SELECT m2.user_id FROM room_members m1
	JOIN encrypted_rooms e ON e.room_id = m1.room_id
	JOIN room_members m2 ON m2.room_id = m1.room_id
	WHERE m1.user_id = $1 AND m1.membership IN ` + sharingSQL + ` AND m2.membership IN ` + sharingSQL

func (s *deviceStore) SharedUsers(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.pool.Query(ctx, sharedUsersSQL+` ORDER BY 1`, userID)
	if err != nil {
		return nil, fmt.Errorf("listing users sharing a room: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (t deviceTx) SharedWith(ctx context.Context, userID string) ([]string, error) {
	return t.strings(ctx, "listing users sharing a room", sharedUsersSQL, userID)
}

func (t deviceTx) DeviceChanges(ctx context.Context, _ string, shared []string, from, to int64) ([]string, error) {
	return t.strings(ctx, "reading device changes", `
		SELECT DISTINCT user_id FROM device_list_stream
		WHERE pos > $1 AND pos <= $2 AND kind = 'device' AND user_id = ANY($3)`, from, to, shared)
}

func (t deviceTx) RoomChanges(ctx context.Context, userID string, from, to int64) ([]devicelists.StreamEntry, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT s.kind, coalesce(s.user_id, ''), s.room_id FROM device_list_stream s
		WHERE s.pos > $1 AND s.pos <= $2 AND s.kind IN ('membership', 'encryption')
		  AND s.room_id IN (SELECT room_id FROM room_members WHERE user_id = $3)`, from, to, userID)
	if err != nil {
		return nil, fmt.Errorf("reading membership changes: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[devicelists.StreamEntry])
	if err != nil {
		return nil, fmt.Errorf("reading membership changes: %w", err)
	}
	return out, nil
}

func (t deviceTx) RoomMembers(ctx context.Context, roomIDs []string) ([]string, error) {
	return t.strings(ctx, "reading room members", `SELECT DISTINCT user_id FROM room_members WHERE room_id = ANY($1)`, roomIDs)
}

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

func (s *deviceStore) CrossSigning(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	rows, err := s.db.pool.Query(ctx, `
		SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE user_id = ANY($1)`, userIDs)
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]json.RawMessage{}
	for rows.Next() {
		var u, t string
		var k []byte
		if err := rows.Scan(&u, &t, &k); err != nil {
			return nil, err
		}
		if out[u] == nil {
			out[u] = map[string]json.RawMessage{}
		}
		out[u][t] = k
	}
	return out, rows.Err()
}
