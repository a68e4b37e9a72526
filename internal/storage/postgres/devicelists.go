package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
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

// appendStream takes the stream lock and a position, and returns it.
func (s *deviceStore) appendStream(ctx context.Context, tx pgx.Tx, kind, userID, roomID string) (int64, error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
		return 0, fmt.Errorf("locking the device-list stream: %w", err)
	}
	var u, r *string
	if userID != "" {
		u = &userID
	}
	if roomID != "" {
		r = &roomID
	}
	var pos int64
	if err := tx.QueryRow(ctx, `INSERT INTO device_list_stream (kind, user_id, room_id) VALUES ($1, $2, $3) RETURNING pos`,
		kind, u, r).Scan(&pos); err != nil {
		return 0, fmt.Errorf("appending to the device-list stream: %w", err)
	}
	if h := s.db.opts.DeviceListHooks.AfterStreamAppend; h != nil {
		return pos, h(ctx, kind, userID, roomID)
	}
	return pos, nil
}

// sharersOf returns the wake-up keys of the local users who share an
// encrypted room with userID, and of userID itself.
func sharersOf(ctx context.Context, tx pgx.Tx, userID string) ([]wakeup.Key, error) {
	rows, err := tx.Query(ctx, `
		SELECT DISTINCT m2.user_id FROM room_members m1
		JOIN encrypted_rooms e ON e.room_id = m1.room_id
		JOIN room_members m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership IN `+sharingSQL+`
		  AND m2.membership IN `+sharingSQL+` AND m2.is_local`, userID)
	if err != nil {
		return nil, fmt.Errorf("finding users sharing a room: %w", err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	keys := []wakeup.Key{wakeup.UserKey(userID)}
	for _, u := range users {
		if u != userID {
			keys = append(keys, wakeup.UserKey(u))
		}
	}
	return keys, nil
}

// roomLocals returns the wake-up keys of the local members of a room
// (whatever their membership: a leaver must learn whom to forget).
func roomLocals(ctx context.Context, tx pgx.Tx, roomID string) ([]wakeup.Key, error) {
	rows, err := tx.Query(ctx, `SELECT user_id FROM room_members WHERE room_id = $1 AND is_local`, roomID)
	if err != nil {
		return nil, fmt.Errorf("finding local members: %w", err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	keys := make([]wakeup.Key, len(users))
	for i, u := range users {
		keys[i] = wakeup.UserKey(u)
	}
	return keys, nil
}

// deviceChanged records a change of userID's devices (local or remote) and
// returns the position and whom to wake.
func (s *deviceStore) deviceChanged(ctx context.Context, tx pgx.Tx, userID string) (int64, []wakeup.Key, error) {
	pos, err := s.appendStream(ctx, tx, "device", userID, "")
	if err != nil {
		return 0, nil, err
	}
	keys, err := sharersOf(ctx, tx, userID)
	return pos, keys, err
}

func notifyKeys(ctx context.Context, tx pgx.Tx, keys []wakeup.Key) error {
	if len(keys) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	queueNotify(b, keys)
	return tx.SendBatch(ctx, b).Close()
}

func (s *deviceStore) PutCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage) (bool, error) {
	var changed bool
	var wake []wakeup.Key
	types := make([]string, 0, len(keys))
	for t := range keys {
		types = append(types, t)
	}
	sort.Strings(types)
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		changed, wake = false, nil
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
			return err
		}
		public := false // the master or self-signing key changed: other servers are told
		for _, t := range types {
			tag, err := tx.Exec(ctx, `
				INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json
				WHERE cross_signing_keys.key_json <> excluded.key_json`, userID, t, []byte(keys[t]))
			if err != nil {
				return fmt.Errorf("storing %s key: %w", t, err)
			}
			if tag.RowsAffected() > 0 {
				changed = true
				public = public || t != devicelists.UserSigningKey
			}
		}
		if !changed {
			return nil
		}
		var err error
		if _, wake, err = s.deviceChanged(ctx, tx, userID); err != nil {
			return err
		}
		if public {
			out, err := s.queueSigningKeys(ctx, tx, userID)
			if err != nil {
				return err
			}
			wake = append(wake, out...)
		}
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return false, err
	}
	s.db.wakeLocal(wake)
	return changed, nil
}

func (s *deviceStore) SetRoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	var changed bool
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		changed, wake = false, nil
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO encrypted_rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING`, roomID)
		if err != nil {
			return fmt.Errorf("recording encryption: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		changed = true
		if _, err := s.appendStream(ctx, tx, "encryption", "", roomID); err != nil {
			return err
		}
		if err := trackRemote(ctx, tx, roomID, true, nil); err != nil {
			return err
		}
		if wake, err = roomLocals(ctx, tx, roomID); err != nil {
			return err
		}
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return false, err
	}
	s.db.wakeLocal(wake)
	return changed, nil
}

func (s *deviceStore) SetMemberships(ctx context.Context, roomID string, ms []devicelists.Membership) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	users := make([]string, len(ms))
	memberships := make([]string, len(ms))
	orderings := make([]int64, len(ms))
	locals := make([]bool, len(ms))
	local := make(map[string]bool, len(ms))
	for i, m := range ms {
		users[i], memberships[i], orderings[i], locals[i] = m.UserID, m.Membership, m.StreamOrdering, m.Local
		local[m.UserID] = m.Local
	}
	var applied int
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		applied, wake = 0, nil
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
			return err
		}
		var encrypted bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = $1)`, roomID).Scan(&encrypted); err != nil {
			return err
		}
		// old reads the rows as they were before this statement; up applies
		// only updates newer than the stored stream ordering.
		rows, err := tx.Query(ctx, `
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
			SELECT up.user_id, up.membership, old.membership FROM up LEFT JOIN old USING (user_id) ORDER BY up.user_id`,
			roomID, users, memberships, orderings, locals)
		if err != nil {
			return fmt.Errorf("storing memberships: %w", err)
		}
		var changes []devicelists.SharingChange
		for rows.Next() {
			var user, now string
			var before *string
			if err := rows.Scan(&user, &now, &before); err != nil {
				rows.Close()
				return err
			}
			applied++
			was := before != nil && devicelists.Sharing(*before)
			if encrypted && was != devicelists.Sharing(now) {
				changes = append(changes, devicelists.SharingChange{UserID: user, Local: local[user], Sharing: devicelists.Sharing(now)})
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(changes) == 0 {
			return nil
		}
		for _, c := range changes {
			if _, err := s.appendStream(ctx, tx, "membership", c.UserID, roomID); err != nil {
				return err
			}
			wake = append(wake, wakeup.UserKey(c.UserID))
		}
		t := devicelists.TrackingOf(changes)
		if t.AllStart || len(t.Start) > 0 {
			if err := trackRemote(ctx, tx, roomID, t.AllStart, t.Start); err != nil {
				return err
			}
		}
		if t.AllStop || len(t.Stop) > 0 {
			if err := untrackRemote(ctx, tx, roomID, t.AllStop, t.Stop); err != nil {
				return err
			}
		}
		locals, err := roomLocals(ctx, tx, roomID)
		if err != nil {
			return err
		}
		wake = append(wake, locals...)
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return 0, err
	}
	s.db.wakeLocal(wake)
	return applied, nil
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

// Changes computes changed/left for userID over (from, to]:
//   - users sharing an encrypted room with userID now whose devices changed,
//     and userID itself if its own devices changed;
//   - for membership and encryption changes in rooms userID is or was in:
//     the users concerned (every member, when userID's own membership or the
//     room's encryption changed) go to changed if they share an encrypted
//     room with userID now, else to left.
func (s *deviceStore) Changes(ctx context.Context, userID string, from, to int64) (devicelists.Changes, error) {
	shared, err := s.sharedSet(ctx, userID)
	if err != nil {
		return devicelists.Changes{}, err
	}
	changed := map[string]bool{}
	left := map[string]bool{}

	rows, err := s.db.pool.Query(ctx, `
		SELECT DISTINCT user_id FROM device_list_stream
		WHERE pos > $1 AND pos <= $2 AND kind = 'device' AND user_id = ANY($3)`,
		from, to, setKeys(shared))
	if err != nil {
		return devicelists.Changes{}, fmt.Errorf("reading device changes: %w", err)
	}
	devChanged, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return devicelists.Changes{}, err
	}
	for _, u := range devChanged {
		changed[u] = true
	}

	rows, err = s.db.pool.Query(ctx, `
		SELECT s.kind, coalesce(s.user_id, ''), s.room_id FROM device_list_stream s
		WHERE s.pos > $1 AND s.pos <= $2 AND s.kind IN ('membership', 'encryption')
		  AND s.room_id IN (SELECT room_id FROM room_members WHERE user_id = $3)`, from, to, userID)
	if err != nil {
		return devicelists.Changes{}, fmt.Errorf("reading membership changes: %w", err)
	}
	var candidates []string
	var wholeRooms []string
	for rows.Next() {
		var kind, user, room string
		if err := rows.Scan(&kind, &user, &room); err != nil {
			rows.Close()
			return devicelists.Changes{}, err
		}
		if kind == "encryption" || user == userID {
			wholeRooms = append(wholeRooms, room)
		} else {
			candidates = append(candidates, user)
		}
	}
	if err := rows.Err(); err != nil {
		return devicelists.Changes{}, err
	}
	if len(wholeRooms) > 0 {
		rows, err := s.db.pool.Query(ctx, `SELECT DISTINCT user_id FROM room_members WHERE room_id = ANY($1)`, wholeRooms)
		if err != nil {
			return devicelists.Changes{}, fmt.Errorf("reading room members: %w", err)
		}
		members, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return devicelists.Changes{}, err
		}
		candidates = append(candidates, members...)
	}
	for _, u := range candidates {
		if u == userID {
			continue
		}
		if shared[u] {
			changed[u] = true
		} else {
			left[u] = true
		}
	}
	for u := range left {
		delete(changed, u)
	}
	return devicelists.ChangesOf(changed, left), nil
}

// sharedSet is SharedUsers as a set.
func (s *deviceStore) sharedSet(ctx context.Context, userID string) (map[string]bool, error) {
	users, err := s.SharedUsers(ctx, userID)
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(users))
	for _, u := range users {
		set[u] = true
	}
	return set, nil
}

func (s *deviceStore) SharedUsers(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.pool.Query(ctx, `
		SELECT $1::text
		UNION
		SELECT m2.user_id FROM room_members m1
		JOIN encrypted_rooms e ON e.room_id = m1.room_id
		JOIN room_members m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership IN `+sharingSQL+` AND m2.membership IN `+sharingSQL+`
		ORDER BY 1`, userID)
	if err != nil {
		return nil, fmt.Errorf("listing users sharing a room: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
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

func (s *deviceStore) PruneStream(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		// The lock keeps a writer from committing below the new pruning
		// point while we move it.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			DELETE FROM device_list_stream WHERE pos = ANY (ARRAY (
				SELECT pos FROM (SELECT pos, created_at FROM device_list_stream ORDER BY pos LIMIT $2) oldest
				WHERE created_at < $1))
			RETURNING pos`, cutoff, limit)
		if err != nil {
			return err
		}
		deleted, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		n = len(deleted)
		if n == 0 {
			return nil
		}
		top := deleted[0]
		for _, p := range deleted {
			top = max(top, p)
		}
		_, err = tx.Exec(ctx, `UPDATE meta SET device_list_pruned_below = greatest(device_list_pruned_below, $1)`, top)
		return err
	})
	return n, err
}

func setKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
