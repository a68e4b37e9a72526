package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// remoteServersSQL lists the servers of the remote users sharing a room,
// encrypted or not, with the local user (the parameter): where its
// device-list EDUs go (the spec wants every server sharing a room told). A
// user id's server is everything after its first ':'.
const remoteServersSQL = `
	SELECT DISTINCT substr(m2.user_id, instr(m2.user_id, ':') + 1) FROM room_members m1
	JOIN room_members m2 ON m2.room_id = m1.room_id
	WHERE m1.user_id = ? AND m1.membership IN ` + sharingSQL + `
	  AND m2.membership IN ` + sharingSQL + ` AND m2.is_local = 0
	ORDER BY 1`

// sharedWithLocal is a condition: the user in column expression col shares
// an encrypted room with a local user.
func sharedWithLocal(col string) string {
	return `EXISTS (SELECT 1 FROM room_members sr
		JOIN encrypted_rooms se ON se.room_id = sr.room_id
		JOIN room_members sl ON sl.room_id = sr.room_id
		WHERE sr.user_id = ` + col + ` AND sr.membership IN ` + sharingSQL + `
		  AND sl.is_local = 1 AND sl.membership IN ` + sharingSQL + `)`
}

// inList returns "(?,?,…)" and the arguments of a list of strings; the
// callers' lists are bounded (a room's members, a batch of users).
func inList(values []string) (string, []any) {
	args := make([]any, len(values))
	for i, v := range values {
		args[i] = v
	}
	if len(values) == 0 {
		return "(NULL)", nil
	}
	return placeholders(1, len(values)), args
}

func (t deviceTx) RemoteServers(ctx context.Context, userID string) ([]string, error) {
	dests, err := queryStrings(ctx, t.tx, remoteServersSQL, userID)
	if err != nil {
		return nil, fmt.Errorf("finding servers sharing a room: %w", err)
	}
	return dests, nil
}

func (t deviceTx) QueueOutbound(ctx context.Context, destinations []string, eduType string, edu []byte) error {
	for chunk := range slices.Chunk(destinations, maxRowsPerStatement) {
		args := make([]any, 0, 4*len(chunk))
		for _, d := range chunk {
			args = append(args, d, eduType, edu, t.now)
		}
		if _, err := t.tx.ExecContext(ctx, `
			INSERT INTO device_list_outbox (destination, edu_type, edu, enqueued_at) VALUES `+placeholders(len(chunk), 4),
			args...); err != nil {
			return fmt.Errorf("queueing %s: %w", eduType, err)
		}
	}
	return nil
}

// PutCrossSigningKey's WHERE makes storing the same key again touch no
// row.
func (t deviceTx) PutCrossSigningKey(ctx context.Context, userID, keyType string, key json.RawMessage) (bool, error) {
	r, err := t.tx.ExecContext(ctx, `
		INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES (?, ?, ?)
		ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json
		WHERE cross_signing_keys.key_json <> excluded.key_json`, userID, keyType, []byte(key))
	if err != nil {
		return false, fmt.Errorf("storing %s key: %w", keyType, err)
	}
	n, err := r.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("storing %s key: %w", keyType, err)
	}
	return n > 0, nil
}

func (t deviceTx) CrossSigningOf(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	out := map[string]map[string]json.RawMessage{}
	err := eachChunk(userIDs, func(in string, args []any) error {
		rows, err := t.tx.QueryContext(ctx, `
			SELECT user_id, key_type, key_json FROM cross_signing_keys
			WHERE user_id IN `+in+` AND key_type IN ('master', 'self_signing')`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var u, kt string
			var k []byte
			if err := rows.Scan(&u, &kt, &k); err != nil {
				return err
			}
			if out[u] == nil {
				out[u] = map[string]json.RawMessage{}
			}
			out[u][kt] = k
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	return out, nil
}

func (s *deviceStore) PeekOutbox(ctx context.Context, destination string, limit int) ([]devicelists.QueuedEDU, error) {
	rows, err := s.db.readers.QueryContext(ctx, `
		SELECT pos, destination, edu_type, edu, enqueued_at FROM device_list_outbox
		WHERE destination = ? ORDER BY pos LIMIT ?`, destination, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the device-list outbox: %w", err)
	}
	defer rows.Close()
	var out []devicelists.QueuedEDU
	for rows.Next() {
		var q devicelists.QueuedEDU
		var edu []byte
		var at int64
		if err := rows.Scan(&q.Pos, &q.Destination, &q.Type, &edu, &at); err != nil {
			return nil, fmt.Errorf("reading the device-list outbox: %w", err)
		}
		q.EDU, q.EnqueuedAt = edu, fromMicros(at)
		out = append(out, q)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the device-list outbox: %w", err)
	}
	return out, nil
}

// OutboxDestinations skips from destination to destination over the
// (destination, pos) index: one probe per destination.
func (s *deviceStore) OutboxDestinations(ctx context.Context) ([]string, error) {
	dests, err := queryStrings(ctx, s.db.readers, `
		WITH RECURSIVE d(dest) AS (
			SELECT min(destination) FROM device_list_outbox
			UNION ALL
			SELECT (SELECT min(destination) FROM device_list_outbox WHERE destination > d.dest)
			FROM d WHERE d.dest IS NOT NULL
		)
		SELECT dest FROM d WHERE dest IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("listing device-list outbox destinations: %w", err)
	}
	return dests, nil
}

// deleteDeviceListOutboxRows is the one statement that removes sent EDUs
// from the device-list outbox: exactly the listed positions of one
// destination. The federation store runs it inside its fenced transaction.
func deleteDeviceListOutboxRows(ctx context.Context, tx *sql.Tx, destination string, positions []int64) (map[string]int, error) {
	out := map[string]int{}
	for chunk := range slices.Chunk(positions, maxRowsPerStatement) {
		args := make([]any, 0, len(chunk)+1)
		args = append(args, destination)
		for _, p := range chunk {
			args = append(args, p)
		}
		types, err := queryStrings(ctx, tx, `
			DELETE FROM device_list_outbox WHERE destination = ? AND pos IN `+placeholders(1, len(chunk))+`
			RETURNING edu_type`, args...)
		if err != nil {
			return nil, fmt.Errorf("deleting device-list outbox rows: %w", err)
		}
		for _, t := range types {
			out[t]++
		}
	}
	return out, nil
}

func (s *deviceStore) DeleteOutbox(ctx context.Context, destination string, positions []int64) (map[string]int, error) {
	if len(positions) == 0 {
		return map[string]int{}, nil
	}
	var out map[string]int
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = deleteDeviceListOutboxRows(ctx, tx, destination, positions)
		return err
	})
	return out, err
}

// ExpireOutbox walks the enqueued_at index over the expired rows only,
// sparing the rows of stored federation transactions.
func (s *deviceStore) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]devicelists.DestinationCount, error) {
	counts, err := s.db.expireOutboxRows(ctx, "device_list_outbox", devicelists.OutboxSource, cutoff, limit)
	if err != nil {
		return nil, fmt.Errorf("expiring device-list outbox rows: %w", err)
	}
	var out []devicelists.DestinationCount
	for _, c := range counts {
		out = append(out, devicelists.DestinationCount(c))
	}
	return out, nil
}

func (s *deviceStore) OutboxBacklog(ctx context.Context) (devicelists.Backlog, error) {
	var b devicelists.Backlog
	var oldest sql.NullInt64
	err := s.db.readers.QueryRowContext(ctx, `SELECT count(*), min(enqueued_at) FROM device_list_outbox`).Scan(&b.Pending, &oldest)
	if err != nil {
		return b, fmt.Errorf("reading device-list outbox backlog: %w", err)
	}
	if oldest.Valid {
		b.Oldest = fromMicros(oldest.Int64)
	}
	return b, nil
}

// deviceKeysOf reads (device_id, display name, keys) rows of one user,
// sorted by device id in byte order.
func deviceKeysOf(ctx context.Context, q queryer, query, userID string) ([]devicelists.DeviceKeys, error) {
	rows, err := q.QueryContext(ctx, query, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []devicelists.DeviceKeys
	for rows.Next() {
		d := devicelists.DeviceKeys{UserID: userID}
		var name sql.NullString
		var keys []byte
		if err := rows.Scan(&d.DeviceID, &name, &keys); err != nil {
			return nil, err
		}
		d.DisplayName = name.String
		if keys != nil {
			d.Keys = keys
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b devicelists.DeviceKeys) int { return cmp.Compare(a.DeviceID, b.DeviceID) })
	return out, rows.Err()
}

// ---------------------------------------------------------------------------
// The remote cache.
// ---------------------------------------------------------------------------

// RemoteState needs no row lock: the writer's turn keeps the row still.
func (t deviceTx) RemoteState(ctx context.Context, userID string) (devicelists.RemoteState, bool, error) {
	var st devicelists.RemoteState
	var applied string
	var stale int
	err := t.tx.QueryRowContext(ctx, `
		SELECT stream_id, applied_ids, stale FROM remote_device_lists WHERE user_id = ?`,
		userID).Scan(&st.StreamID, &applied, &stale)
	if errors.Is(err, sql.ErrNoRows) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("reading remote device-list state: %w", err)
	}
	if err := json.Unmarshal([]byte(applied), &st.AppliedIDs); err != nil {
		return st, false, fmt.Errorf("reading remote device-list state: applied_ids: %w", err)
	}
	st.Stale = stale == 1
	return st, true, nil
}

func (t deviceTx) RemoteSeen(ctx context.Context, userID string) (int64, bool, error) {
	var seen int64
	err := t.tx.QueryRowContext(ctx, `SELECT seen_stream_id FROM remote_device_lists WHERE user_id = ?`, userID).Scan(&seen)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading remote device-list state: %w", err)
	}
	return seen, true, nil
}

func (t deviceTx) TrackIfShared(ctx context.Context, userID string, seen int64) (bool, error) {
	r, err := t.tx.ExecContext(ctx, `
		INSERT INTO remote_device_lists (user_id, seen_stream_id, retry_at, updated_at)
		SELECT ?1, ?2, ?3, ?3 WHERE `+sharedWithLocal("?1")+`
		ON CONFLICT DO NOTHING`, userID, seen, t.now)
	if err != nil {
		return false, fmt.Errorf("tracking remote user: %w", err)
	}
	n, err := r.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("tracking remote user: %w", err)
	}
	return n > 0, nil
}

func (t deviceTx) MarkStale(ctx context.Context, userID string, seen int64) error {
	_, err := t.tx.ExecContext(ctx, `
		UPDATE remote_device_lists SET
			seen_stream_id = max(seen_stream_id, ?2),
			retry_at = CASE WHEN stale = 1 THEN retry_at ELSE ?3 END,
			failures = CASE WHEN stale = 1 THEN failures ELSE 0 END,
			stale = 1, updated_at = ?3
		WHERE user_id = ?1`, userID, seen, t.now)
	if err != nil {
		return fmt.Errorf("marking remote device list stale: %w", err)
	}
	return nil
}

func (t deviceTx) UpsertRemoteDevice(ctx context.Context, d devicelists.DeviceKeys) error {
	var name any
	if d.DisplayName != "" {
		name = d.DisplayName
	}
	if _, err := t.tx.ExecContext(ctx, `
		INSERT INTO remote_devices (user_id, device_id, keys, display_name) VALUES (?, ?, ?, ?)
		ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys, display_name = excluded.display_name`,
		d.UserID, d.DeviceID, []byte(d.Keys), name); err != nil {
		return fmt.Errorf("updating remote device: %w", err)
	}
	return nil
}

func (t deviceTx) DeleteRemoteDevice(ctx context.Context, userID, deviceID string) error {
	if _, err := t.tx.ExecContext(ctx, `DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?`, userID, deviceID); err != nil {
		return fmt.Errorf("updating remote device: %w", err)
	}
	return nil
}

// SetRemoteApplied stores the applied ids as a JSON array.
func (t deviceTx) SetRemoteApplied(ctx context.Context, userID string, streamID int64, applied []int64) error {
	ids, err := json.Marshal(applied)
	if err != nil {
		return err
	}
	if _, err := t.tx.ExecContext(ctx, `
		UPDATE remote_device_lists SET stream_id = ?, applied_ids = ?, updated_at = ? WHERE user_id = ?`,
		streamID, string(ids), t.now, userID); err != nil {
		return fmt.Errorf("updating remote device-list state: %w", err)
	}
	return nil
}

func (t deviceTx) RemoteDevices(ctx context.Context, userID string) ([]devicelists.DeviceKeys, error) {
	old, err := deviceKeysOf(ctx, t.tx, `
		SELECT device_id, display_name, keys FROM remote_devices WHERE user_id = ?`, userID)
	if err != nil {
		return nil, fmt.Errorf("reading remote devices: %w", err)
	}
	return old, nil
}

func (t deviceTx) FinishResync(ctx context.Context, userID string, streamID int64, stale bool) error {
	if _, err := t.tx.ExecContext(ctx, `
		UPDATE remote_device_lists SET stream_id = ?2, applied_ids = '[]', stale = ?3, seen_stream_id = 0,
			failures = CASE WHEN ?3 THEN failures ELSE 0 END,
			retry_at = CASE WHEN ?3 THEN retry_at END, updated_at = ?4
		WHERE user_id = ?1`, userID, streamID, stale, t.now); err != nil {
		return fmt.Errorf("updating remote device-list state: %w", err)
	}
	return nil
}

func (s *deviceStore) ClaimResyncs(ctx context.Context, limit int, lease time.Duration) ([]devicelists.ResyncJob, error) {
	var out []devicelists.ResyncJob
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		out = nil
		now := micros(time.Now())
		rows, err := tx.QueryContext(ctx, `
			UPDATE remote_device_lists SET retry_at = ?1 + ?2
			WHERE user_id IN (
				SELECT user_id FROM remote_device_lists WHERE stale = 1 AND retry_at <= ?1
				ORDER BY retry_at LIMIT ?3)
			RETURNING user_id, failures`, now, lease.Microseconds(), limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var j devicelists.ResyncJob
			if err := rows.Scan(&j.UserID, &j.Failures); err != nil {
				return err
			}
			out = append(out, j)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claiming resyncs: %w", err)
	}
	return out, nil
}

func (t deviceTx) ReplaceRemoteList(ctx context.Context, l devicelists.RemoteDeviceList) error {
	tx := t.tx
	if _, err := tx.ExecContext(ctx, `DELETE FROM remote_devices WHERE user_id = ?`, l.UserID); err != nil {
		return fmt.Errorf("replacing remote devices: %w", err)
	}
	for chunk := range slices.Chunk(l.Devices, maxRowsPerStatement) {
		args := make([]any, 0, 4*len(chunk))
		for _, d := range chunk {
			var name, keys any
			if d.DisplayName != "" {
				name = d.DisplayName
			}
			if d.Keys != nil {
				keys = []byte(d.Keys)
			}
			args = append(args, l.UserID, d.DeviceID, keys, name)
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO remote_devices (user_id, device_id, keys, display_name) VALUES `+placeholders(len(chunk), 4), args...); err != nil {
			return fmt.Errorf("replacing remote devices: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `
		DELETE FROM cross_signing_keys WHERE user_id = ? AND key_type IN ('master', 'self_signing')`, l.UserID); err != nil {
		return fmt.Errorf("replacing remote cross-signing keys: %w", err)
	}
	for t, k := range map[string]json.RawMessage{devicelists.MasterKey: l.MasterKey, devicelists.SelfSigningKey: l.SelfSigningKey} {
		if k == nil {
			continue
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES (?, ?, ?)`, l.UserID, t, []byte(k)); err != nil {
			return fmt.Errorf("replacing remote cross-signing keys: %w", err)
		}
	}
	return nil
}

func (s *deviceStore) FailResync(ctx context.Context, userID string, failures int, retryIn time.Duration) error {
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			UPDATE remote_device_lists SET failures = ?, retry_at = ?
			WHERE user_id = ? AND stale = 1`, failures, micros(time.Now())+retryIn.Microseconds(), userID)
		return err
	})
	if err != nil {
		return fmt.Errorf("recording failed resync: %w", err)
	}
	return nil
}

// unknownDeviceSQL finds a fresh cache of user ?1 that lacks device ?2.
const unknownDeviceSQL = `user_id = ?1 AND stale = 0
	AND NOT EXISTS (SELECT 1 FROM remote_devices WHERE user_id = ?1 AND device_id = ?2)`

// ResyncIfUnknownDevice reads first, so that the common case (the device
// is known) does not wait for the writer's turn, then writes with the same
// condition.
func (s *deviceStore) ResyncIfUnknownDevice(ctx context.Context, userID, deviceID string) (bool, error) {
	var unknown bool
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM remote_device_lists WHERE `+unknownDeviceSQL+`)`,
			userID, deviceID).Scan(&unknown)
	})
	if err != nil {
		return false, fmt.Errorf("reading remote device list: %w", err)
	}
	if !unknown {
		return false, nil
	}
	var marked bool
	err = s.db.write(ctx, func(tx *sql.Tx) error {
		now := micros(time.Now())
		res, err := tx.ExecContext(ctx, `
			UPDATE remote_device_lists SET stale = 1, retry_at = ?3, failures = 0, updated_at = ?3
			WHERE `+unknownDeviceSQL, userID, deviceID, now)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		marked = n > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("marking remote device list stale: %w", err)
	}
	return marked, nil
}

func (t deviceTx) FreshRemoteLists(ctx context.Context, userIDs []string) ([]devicelists.RemoteDeviceList, error) {
	var out []devicelists.RemoteDeviceList
	err := eachChunk(userIDs, func(in string, args []any) error {
		rows, err := t.tx.QueryContext(ctx, `
			SELECT d.user_id, d.stream_id FROM remote_device_lists d
			WHERE d.user_id IN `+in+` AND d.stale = 0 AND `+sharedWithLocal("d.user_id"), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var l devicelists.RemoteDeviceList
			if err := rows.Scan(&l.UserID, &l.StreamID); err != nil {
				return err
			}
			out = append(out, l)
		}
		return rows.Err()
	})
	return out, err
}

// RemoteDevicesOf orders by user and device id in byte order (SQLite's
// BINARY collation).
func (t deviceTx) RemoteDevicesOf(ctx context.Context, userIDs []string) ([]devicelists.DeviceKeys, error) {
	var out []devicelists.DeviceKeys
	err := eachChunk(userIDs, func(in string, args []any) error {
		rows, err := t.tx.QueryContext(ctx, `
			SELECT user_id, device_id, display_name, keys FROM remote_devices
			WHERE user_id IN `+in+` ORDER BY user_id, device_id`, args...)
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
			d.DisplayName, d.Keys = name.String, keys
			out = append(out, d)
		}
		return rows.Err()
	})
	return out, err
}

func (t deviceTx) DropRemote(ctx context.Context, users []string) error {
	tx := t.tx
	return eachChunk(users, func(in string, args []any) error {
		for _, table := range []string{"remote_devices", "cross_signing_keys", "remote_device_lists"} {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE user_id IN `+in, args...); err != nil {
				return fmt.Errorf("dropping remote device lists: %w", err)
			}
		}
		return nil
	})
}

func (t deviceTx) RemoteUsersAfter(ctx context.Context, after string, limit int) ([]devicelists.TrackedUser, error) {
	rows, err := t.tx.QueryContext(ctx, `
		SELECT d.user_id, `+sharedWithLocal("d.user_id")+` FROM remote_device_lists d
		WHERE d.user_id > ? ORDER BY d.user_id LIMIT ?`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []devicelists.TrackedUser
	for rows.Next() {
		var u devicelists.TrackedUser
		if err := rows.Scan(&u.UserID, &u.Shared); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

func (s *deviceStore) RemoteUserCount(ctx context.Context) (int, error) {
	var n int
	if err := s.db.readers.QueryRowContext(ctx, `SELECT count(*) FROM remote_device_lists`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting remote device lists: %w", err)
	}
	return n, nil
}

func (t deviceTx) TrackRemote(ctx context.Context, roomID string, all bool, users []string) error {
	in, uargs := inList(users)
	args := append([]any{roomID, all, t.now}, uargs...)
	_, err := t.tx.ExecContext(ctx, `
		INSERT INTO remote_device_lists (user_id, retry_at, updated_at)
		SELECT DISTINCT m.user_id, ?3, ?3 FROM room_members m
		WHERE m.room_id = ?1 AND m.is_local = 0 AND m.membership IN `+sharingSQL+`
		  AND (?2 OR m.user_id IN `+in+`)
		  AND EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = ?1)
		  AND EXISTS (SELECT 1 FROM room_members l WHERE l.room_id = ?1 AND l.is_local = 1 AND l.membership IN `+sharingSQL+`)
		ON CONFLICT DO NOTHING`, args...)
	if err != nil {
		return fmt.Errorf("tracking remote users: %w", err)
	}
	return nil
}

func (t deviceTx) UnsharedRemote(ctx context.Context, roomID string, all bool, users []string) ([]string, error) {
	candidates := slices.Clone(users)
	if all {
		members, err := queryStrings(ctx, t.tx, `SELECT user_id FROM room_members WHERE room_id = ? AND is_local = 0`, roomID)
		if err != nil {
			return nil, fmt.Errorf("finding remote users no longer shared: %w", err)
		}
		candidates = append(candidates, members...)
	}
	var victims []string
	err := eachChunk(candidates, func(in string, args []any) error {
		v, err := queryStrings(ctx, t.tx, `
			SELECT d.user_id FROM remote_device_lists d
			WHERE d.user_id IN `+in+` AND NOT `+sharedWithLocal("d.user_id"), args...)
		victims = append(victims, v...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("finding remote users no longer shared: %w", err)
	}
	return victims, nil
}
