package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// The device-list stream needs no lock of its own, where PostgreSQL takes an
// advisory lock: every writer of the stream runs inside db.write, which holds
// the one writer connection for the whole transaction. Positions are
// therefore taken and committed in the same order (invariant 3 for this
// stream): a reader that saw position P never sees a lower position commit
// later.

// sharingSQL is devicelists.Sharing in SQL: the memberships clients encrypt
// for.
const sharingSQL = `('join', 'invite', 'knock')`

// sharedUsersSQL selects the first parameter's user and every user sharing
// an encrypted room with them; it takes the user id twice.
const sharedUsersSQL = `
	SELECT ?
	UNION
	SELECT m2.user_id FROM room_members m1
	JOIN encrypted_rooms e ON e.room_id = m1.room_id
	JOIN room_members m2 ON m2.room_id = m1.room_id
	WHERE m1.user_id = ? AND m1.membership IN ` + sharingSQL + ` AND m2.membership IN ` + sharingSQL

// queryer is what both a transaction and the reader pool offer.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryStrings runs a query of one text column and returns its values.
func queryStrings(ctx context.Context, q queryer, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// eachChunk calls fn with the "(?,?,…)" list and arguments of each chunk of
// values, so an IN list of any length stays far below SQLite's limit on
// bound parameters.
func eachChunk(values []string, fn func(in string, args []any) error) error {
	for chunk := range slices.Chunk(values, maxRowsPerStatement) {
		args := make([]any, len(chunk))
		for i, v := range chunk {
			args[i] = v
		}
		if err := fn(placeholders(1, len(chunk)), args); err != nil {
			return err
		}
	}
	return nil
}

// LockStream does nothing: the writer's turn is all the ordering the
// stream needs (see above).
func (deviceTx) LockStream(context.Context) error { return nil }

func (t deviceTx) AppendStream(ctx context.Context, kind, userID, roomID string) (int64, error) {
	var u, r any // NULL unless given
	if userID != "" {
		u = userID
	}
	if roomID != "" {
		r = roomID
	}
	var pos int64
	if err := t.tx.QueryRowContext(ctx, `
		INSERT INTO device_list_stream (kind, user_id, room_id, created_at) VALUES (?, ?, ?, ?) RETURNING pos`,
		kind, u, r, t.now).Scan(&pos); err != nil {
		return 0, fmt.Errorf("appending to the device-list stream: %w", err)
	}
	return pos, nil
}

func (t deviceTx) LocalSharers(ctx context.Context, userID string) ([]string, error) {
	users, err := queryStrings(ctx, t.tx, `
		SELECT DISTINCT m2.user_id FROM room_members m1
		JOIN encrypted_rooms e ON e.room_id = m1.room_id
		JOIN room_members m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = ? AND m1.membership IN `+sharingSQL+`
		  AND m2.membership IN `+sharingSQL+` AND m2.is_local = 1`, userID)
	if err != nil {
		return nil, fmt.Errorf("finding users sharing a room: %w", err)
	}
	return users, nil
}

func (t deviceTx) RoomLocals(ctx context.Context, roomID string) ([]string, error) {
	users, err := queryStrings(ctx, t.tx, `SELECT user_id FROM room_members WHERE room_id = ? AND is_local = 1`, roomID)
	if err != nil {
		return nil, fmt.Errorf("finding local members: %w", err)
	}
	return users, nil
}

// MarkRoomEncrypted writes pos as 0, as the PostgreSQL backend does.
func (t deviceTx) MarkRoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	r, err := t.tx.ExecContext(ctx, `INSERT INTO encrypted_rooms (room_id) VALUES (?) ON CONFLICT DO NOTHING`, roomID)
	if err != nil {
		return false, fmt.Errorf("recording encryption: %w", err)
	}
	n, err := r.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("recording encryption: %w", err)
	}
	return n > 0, nil
}

func (t deviceTx) RoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	var encrypted bool
	if err := t.tx.QueryRowContext(ctx,
		`SELECT EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = ?)`, roomID).Scan(&encrypted); err != nil {
		return false, fmt.Errorf("checking room encryption: %w", err)
	}
	return encrypted, nil
}

// UpsertMemberships reads the stored memberships of the updated users, then
// upserts the updates, a chunk at a time; the upsert's WHERE ignores an
// update whose stream ordering is not newer than the stored one, and
// RETURNING names the rows it did change. Writers take turns, so nothing
// changes the rows between the read and the upsert.
func (t deviceTx) UpsertMemberships(ctx context.Context, roomID string, ms []devicelists.Membership) ([]devicelists.MembershipChange, error) {
	var out []devicelists.MembershipChange
	for chunk := range slices.Chunk(ms, maxRowsPerStatement) {
		before, err := memberships(ctx, t.tx, roomID, chunk)
		if err != nil {
			return nil, fmt.Errorf("reading memberships: %w", err)
		}
		after, err := upsertMemberships(ctx, t.tx, roomID, chunk)
		if err != nil {
			return nil, fmt.Errorf("storing memberships: %w", err)
		}
		// In the caller's order (by user), as the positions are taken.
		for _, m := range chunk {
			if cur, ok := after[m.UserID]; ok {
				out = append(out, devicelists.MembershipChange{UserID: m.UserID, Before: before[m.UserID], Now: cur})
			}
		}
	}
	return out, nil
}

// memberships returns the stored memberships of room of the users in ms.
func memberships(ctx context.Context, tx *sql.Tx, roomID string, ms []devicelists.Membership) (map[string]string, error) {
	args := make([]any, 0, 1+len(ms))
	args = append(args, roomID)
	for _, m := range ms {
		args = append(args, m.UserID)
	}
	rows, err := tx.QueryContext(ctx, `
		SELECT user_id, membership FROM room_members
		WHERE room_id = ? AND user_id IN `+placeholders(1, len(ms)), args...)
	if err != nil {
		return nil, err
	}
	return userMemberships(rows, len(ms))
}

// userMemberships reads rows of (user_id, membership) into a map.
func userMemberships(rows *sql.Rows, n int) (map[string]string, error) {
	defer rows.Close()
	out := make(map[string]string, n)
	for rows.Next() {
		var u, m string
		if err := rows.Scan(&u, &m); err != nil {
			return nil, err
		}
		out[u] = m
	}
	return out, rows.Err()
}

// upsertMemberships writes the memberships, each only if it is newer than
// the stored one, and returns the users whose row it inserted or updated,
// with their membership now.
func upsertMemberships(ctx context.Context, tx *sql.Tx, roomID string, ms []devicelists.Membership) (map[string]string, error) {
	args := make([]any, 0, 5*len(ms))
	for _, m := range ms {
		args = append(args, roomID, m.UserID, m.Membership, m.StreamOrdering, m.Local)
	}
	rows, err := tx.QueryContext(ctx, `
		INSERT INTO room_members (room_id, user_id, membership, stream_ordering, is_local)
		VALUES `+placeholders(len(ms), 5)+`
		ON CONFLICT (room_id, user_id) DO UPDATE SET
			membership = excluded.membership, stream_ordering = excluded.stream_ordering, is_local = excluded.is_local
		WHERE room_members.stream_ordering < excluded.stream_ordering
		RETURNING user_id, membership`, args...)
	if err != nil {
		return nil, err
	}
	return userMemberships(rows, len(ms))
}

// StreamState reads the head as the newest position or, once pruning has
// emptied the stream, the pruning point: the head never goes back.
// streamStateSQL reads the device-list stream's head (never below the
// pruning point, so positions are never reused) and pruning point. The inbox
// store runs it too, inside /sync's read transaction.
const streamStateSQL = `
	SELECT max(coalesce((SELECT max(pos) FROM device_list_stream), 0), device_list_pruned_below),
	       device_list_pruned_below
	FROM meta`

func (s *deviceStore) StreamState(ctx context.Context) (devicelists.StreamState, error) {
	var st devicelists.StreamState
	err := s.db.readers.QueryRowContext(ctx, streamStateSQL).Scan(&st.Head, &st.PrunedBelow)
	if err != nil {
		return devicelists.StreamState{}, fmt.Errorf("reading the device-list stream state: %w", err)
	}
	return st, nil
}

func (t deviceTx) SharedWith(ctx context.Context, userID string) ([]string, error) {
	users, err := queryStrings(ctx, t.tx, sharedUsersSQL, userID, userID)
	if err != nil {
		return nil, fmt.Errorf("listing users sharing a room: %w", err)
	}
	return users, nil
}

// DeviceChanges takes the shared users again as a subquery: no list of
// parameters to build, and the (user_id, pos) index is probed per user.
func (t deviceTx) DeviceChanges(ctx context.Context, userID string, _ []string, from, to int64) ([]string, error) {
	users, err := queryStrings(ctx, t.tx, `
		WITH shared(user_id) AS (`+sharedUsersSQL+`)
		SELECT DISTINCT user_id FROM device_list_stream
		WHERE pos > ? AND pos <= ? AND kind = 'device' AND user_id IN (SELECT user_id FROM shared)`,
		userID, userID, from, to)
	if err != nil {
		return nil, fmt.Errorf("reading device changes: %w", err)
	}
	return users, nil
}

func (t deviceTx) RoomChanges(ctx context.Context, userID string, from, to int64) ([]devicelists.StreamEntry, error) {
	rows, err := t.tx.QueryContext(ctx, `
		SELECT s.kind, coalesce(s.user_id, ''), s.room_id FROM device_list_stream s
		WHERE s.pos > ? AND s.pos <= ? AND s.kind IN ('membership', 'encryption')
		  AND s.room_id IN (SELECT room_id FROM room_members WHERE user_id = ?)`, from, to, userID)
	if err != nil {
		return nil, fmt.Errorf("reading membership changes: %w", err)
	}
	defer rows.Close()
	var out []devicelists.StreamEntry
	for rows.Next() {
		var e devicelists.StreamEntry
		if err := rows.Scan(&e.Kind, &e.UserID, &e.RoomID); err != nil {
			return nil, fmt.Errorf("reading membership changes: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading membership changes: %w", err)
	}
	return out, nil
}

func (t deviceTx) RoomMembers(ctx context.Context, roomIDs []string) ([]string, error) {
	var out []string
	err := eachChunk(roomIDs, func(in string, args []any) error {
		members, err := queryStrings(ctx, t.tx, `SELECT DISTINCT user_id FROM room_members WHERE room_id IN `+in, args...)
		out = append(out, members...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading room members: %w", err)
	}
	return out, nil
}

func (s *deviceStore) SharedUsers(ctx context.Context, userID string) ([]string, error) {
	users, err := queryStrings(ctx, s.db.readers, sharedUsersSQL+` ORDER BY 1`, userID, userID)
	if err != nil {
		return nil, fmt.Errorf("listing users sharing a room: %w", err)
	}
	return users, nil
}

// LocalKeys reads, in one snapshot, every live device of the users asked
// for whole and the named devices of the others, then orders them by user
// and device (byte order, SQLite's BINARY collation).
func (s *deviceStore) LocalKeys(ctx context.Context, query map[string][]string) ([]devicelists.DeviceKeys, error) {
	type pair struct{ user, device string }
	var allOf []string
	var exact []pair
	seen := map[pair]bool{}
	for u, devs := range query {
		if len(devs) == 0 {
			allOf = append(allOf, u)
		}
		for _, d := range devs {
			if p := (pair{u, d}); !seen[p] {
				seen[p] = true
				exact = append(exact, p)
			}
		}
	}
	var out []devicelists.DeviceKeys
	scan := func(tx *sql.Tx, query string, args []any) error {
		rows, err := tx.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d devicelists.DeviceKeys
			var name sql.NullString
			var keys []byte
			if err := rows.Scan(&d.UserID, &d.DeviceID, &name, &keys); err != nil {
				return err
			}
			d.DisplayName = name.String
			if keys != nil {
				d.Keys = keys
			}
			out = append(out, d)
		}
		return rows.Err()
	}
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		err := eachChunk(allOf, func(in string, args []any) error {
			return scan(tx, `
				SELECT user_id, device_id, display_name, keys FROM devices
				WHERE deleted_at IS NULL AND user_id IN `+in, args)
		})
		if err != nil {
			return err
		}
		for chunk := range slices.Chunk(exact, maxRowsPerStatement) {
			args := make([]any, 0, 2*len(chunk))
			for _, p := range chunk {
				args = append(args, p.user, p.device)
			}
			// The VALUES list drives the join: one index probe per device.
			if err := scan(tx, `
				SELECT d.user_id, d.device_id, d.display_name, d.keys
				FROM (VALUES `+placeholders(len(chunk), 2)+`) AS r
				JOIN devices d ON d.user_id = r.column1 AND d.device_id = r.column2
				WHERE d.deleted_at IS NULL`, args); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading device keys: %w", err)
	}
	// A user is asked for either whole or by device, and the named devices
	// are deduplicated, so no device was read twice.
	slices.SortFunc(out, func(a, b devicelists.DeviceKeys) int {
		return cmp.Or(cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.DeviceID, b.DeviceID))
	})
	return out, nil
}

func (s *deviceStore) CrossSigning(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	out := map[string]map[string]json.RawMessage{}
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		return eachChunk(userIDs, func(in string, args []any) error {
			rows, err := tx.QueryContext(ctx, `
				SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE user_id IN `+in, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var u, t string
				var k []byte
				if err := rows.Scan(&u, &t, &k); err != nil {
					return err
				}
				if out[u] == nil {
					out[u] = map[string]json.RawMessage{}
				}
				out[u][t] = k
			}
			return rows.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	return out, nil
}

// PruneOldest deletes the oldest positions created before cutoff. The
// writer's turn keeps any position from committing below the new pruning
// point meanwhile; and AUTOINCREMENT never hands a pruned position out
// again, so the head (which StreamState takes from the pruning point once
// the stream is empty) never goes back.
func (t deviceTx) PruneOldest(ctx context.Context, cutoff time.Time, limit int) (int, int64, error) {
	rows, err := t.tx.QueryContext(ctx, `
		DELETE FROM device_list_stream WHERE pos IN (
			SELECT pos FROM (SELECT pos, created_at FROM device_list_stream ORDER BY pos LIMIT ?)
			WHERE created_at < ?)
		RETURNING pos`, limit, micros(cutoff))
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	var n int
	var top int64
	for rows.Next() {
		var pos int64
		if err := rows.Scan(&pos); err != nil {
			return 0, 0, err
		}
		n++
		top = max(top, pos)
	}
	return n, top, rows.Err()
}

func (t deviceTx) RaisePrunedBelow(ctx context.Context, pos int64) error {
	_, err := t.tx.ExecContext(ctx, `
		UPDATE meta SET device_list_pruned_below = max(device_list_pruned_below, ?)`, pos)
	return err
}
