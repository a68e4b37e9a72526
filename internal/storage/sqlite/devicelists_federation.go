package sqlite

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// The federation half of device lists, as the PostgreSQL backend does it.
// Every write holds the writer's turn, so outbox positions of a destination
// commit in order, as stream positions do, and the cache of a remote user
// changes in turn with the memberships that decide whether it is kept.

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

// queueOutbound queues edu for every server sharing a room with the local
// user and returns their outbox wake-up keys.
func (s *deviceStore) queueOutbound(ctx context.Context, tx *sql.Tx, now int64, userID, eduType string, edu []byte) ([]wakeup.Key, error) {
	dests, err := queryStrings(ctx, tx, remoteServersSQL, userID)
	if err != nil {
		return nil, fmt.Errorf("finding servers sharing a room: %w", err)
	}
	keys := make([]wakeup.Key, 0, len(dests))
	for chunk := range slices.Chunk(dests, maxRowsPerStatement) {
		args := make([]any, 0, 4*len(chunk))
		for _, d := range chunk {
			args = append(args, d, eduType, edu, now)
			keys = append(keys, wakeup.OutboxKey(d))
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO device_list_outbox (destination, edu_type, edu, enqueued_at) VALUES `+placeholders(len(chunk), 4),
			args...); err != nil {
			return nil, fmt.Errorf("queueing %s: %w", eduType, err)
		}
	}
	if h := s.db.opts.DeviceListHooks.AfterOutboxQueue; h != nil && len(keys) > 0 {
		return keys, h(ctx, userID, eduType)
	}
	return keys, nil
}

// localDeviceChanged records a change of a local user's device: a stream
// position, the user's new head, and an m.device_list_update naming the
// previous head for every server sharing a room with the user.
func (s *deviceStore) localDeviceChanged(ctx context.Context, tx *sql.Tx, now int64, userID string, d devicelists.DeviceUpdate) ([]wakeup.Key, error) {
	pos, wake, err := s.deviceChanged(ctx, tx, now, userID)
	if err != nil {
		return nil, err
	}
	var prev int64
	err = tx.QueryRowContext(ctx, `SELECT stream_id FROM device_list_heads WHERE user_id = ?`, userID).Scan(&prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("reading device-list head: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO device_list_heads (user_id, stream_id) VALUES (?, ?)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`, userID, pos); err != nil {
		return nil, fmt.Errorf("storing device-list head: %w", err)
	}
	edu, err := devicelists.DeviceListUpdateEDU(userID, pos, prev, d)
	if err != nil {
		return nil, err
	}
	out, err := s.queueOutbound(ctx, tx, now, userID, devicelists.EDUDeviceListUpdate, edu)
	if err != nil {
		return nil, err
	}
	return append(wake, out...), nil
}

// queueSigningKeys queues an m.signing_key_update of the local user's
// current master and self-signing keys.
func (s *deviceStore) queueSigningKeys(ctx context.Context, tx *sql.Tx, now int64, userID string) ([]wakeup.Key, error) {
	keys, err := crossSigningOf(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	edu, err := devicelists.SigningKeyUpdateEDU(userID, keys[devicelists.MasterKey], keys[devicelists.SelfSigningKey])
	if err != nil {
		return nil, err
	}
	return s.queueOutbound(ctx, tx, now, userID, devicelists.EDUSigningKeyUpdate, edu)
}

// putCrossSigningKey stores a key and returns 1 if it changed. The
// update's WHERE makes storing the same key again touch no row.
func putCrossSigningKey(ctx context.Context, tx *sql.Tx, userID, keyType string, key json.RawMessage) (int64, error) {
	r, err := tx.ExecContext(ctx, `
		INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES (?, ?, ?)
		ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json
		WHERE cross_signing_keys.key_json <> excluded.key_json`, userID, keyType, []byte(key))
	if err != nil {
		return 0, fmt.Errorf("storing %s key: %w", keyType, err)
	}
	n, err := r.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("storing %s key: %w", keyType, err)
	}
	return n, nil
}

// crossSigningOf reads a user's master and self-signing keys.
func crossSigningOf(ctx context.Context, q queryer, userID string) (map[string]json.RawMessage, error) {
	rows, err := q.QueryContext(ctx, `
		SELECT key_type, key_json FROM cross_signing_keys
		WHERE user_id = ? AND key_type IN ('master', 'self_signing')`, userID)
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	defer rows.Close()
	out := map[string]json.RawMessage{}
	for rows.Next() {
		var t string
		var k []byte
		if err := rows.Scan(&t, &k); err != nil {
			return nil, fmt.Errorf("reading cross-signing keys: %w", err)
		}
		out[t] = k
	}
	return out, rows.Err()
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

func (s *deviceStore) UserDeviceList(ctx context.Context, userID string) (devicelists.UserDeviceList, error) {
	l := devicelists.UserDeviceList{UserID: userID}
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT stream_id FROM device_list_heads WHERE user_id = ?`, userID).Scan(&l.StreamID)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if l.Devices, err = deviceKeysOf(ctx, tx, `
			SELECT device_id, display_name, keys FROM devices
			WHERE user_id = ? AND deleted_at IS NULL AND keys IS NOT NULL`, userID); err != nil {
			return err
		}
		cs, err := crossSigningOf(ctx, tx, userID)
		if err != nil {
			return err
		}
		l.MasterKey, l.SelfSigningKey = cs[devicelists.MasterKey], cs[devicelists.SelfSigningKey]
		return nil
	})
	if err != nil {
		return devicelists.UserDeviceList{}, fmt.Errorf("reading the device list of %s: %w", userID, err)
	}
	return l, nil
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

// remoteState reads a tracked user's row (the writer's turn keeps it
// still).
func remoteState(ctx context.Context, tx *sql.Tx, userID string) (devicelists.RemoteState, bool, error) {
	var st devicelists.RemoteState
	var applied string
	var stale int
	err := tx.QueryRowContext(ctx, `
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

// trackIfShared starts tracking an untracked user who shares an encrypted
// room with a local user: stale, due now, with seen as the newest stream_id
// seen. Anyone else is ignored.
func trackIfShared(ctx context.Context, tx *sql.Tx, now int64, userID string, seen int64) (devicelists.RemoteOutcome, error) {
	r, err := tx.ExecContext(ctx, `
		INSERT INTO remote_device_lists (user_id, seen_stream_id, retry_at, updated_at)
		SELECT ?1, ?2, ?3, ?3 WHERE `+sharedWithLocal("?1")+`
		ON CONFLICT DO NOTHING`, userID, seen, now)
	if err != nil {
		return "", fmt.Errorf("tracking remote user: %w", err)
	}
	if n, err := r.RowsAffected(); err != nil {
		return "", fmt.Errorf("tracking remote user: %w", err)
	} else if n == 0 {
		return devicelists.RemoteIgnored, nil
	}
	return devicelists.RemoteResync, nil
}

// markStale makes a resync due (now, unless one is due already: its backoff
// stands) and remembers the stream_id that could not be applied.
func markStale(ctx context.Context, tx *sql.Tx, now int64, userID string, seen int64) error {
	_, err := tx.ExecContext(ctx, `
		UPDATE remote_device_lists SET
			seen_stream_id = max(seen_stream_id, ?2),
			retry_at = CASE WHEN stale = 1 THEN retry_at ELSE ?3 END,
			failures = CASE WHEN stale = 1 THEN failures ELSE 0 END,
			stale = 1, updated_at = ?3
		WHERE user_id = ?1`, userID, seen, now)
	if err != nil {
		return fmt.Errorf("marking remote device list stale: %w", err)
	}
	return nil
}

func (s *deviceStore) ApplyRemoteUpdate(ctx context.Context, u devicelists.RemoteUpdate) (devicelists.RemoteOutcome, error) {
	var out devicelists.RemoteOutcome
	var wake []wakeup.Key
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		out, wake = "", nil
		now := micros(time.Now())
		st, tracked, err := remoteState(ctx, tx, u.UserID)
		if err != nil {
			return err
		}
		if !tracked {
			out, err = trackIfShared(ctx, tx, now, u.UserID, u.StreamID)
			return err
		}
		out = devicelists.DecideRemoteUpdate(st, u)
		switch out {
		case devicelists.RemoteResync:
			return markStale(ctx, tx, now, u.UserID, u.StreamID)
		case devicelists.RemoteApplied:
		default:
			return nil
		}
		if u.Deleted {
			_, err = tx.ExecContext(ctx, `DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?`, u.UserID, u.DeviceID)
		} else {
			var name any
			if u.DisplayName != "" {
				name = u.DisplayName
			}
			_, err = tx.ExecContext(ctx, `
				INSERT INTO remote_devices (user_id, device_id, keys, display_name) VALUES (?, ?, ?, ?)
				ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys, display_name = excluded.display_name`,
				u.UserID, u.DeviceID, []byte(u.Keys), name)
		}
		if err != nil {
			return fmt.Errorf("updating remote device: %w", err)
		}
		applied, err := json.Marshal(devicelists.PushApplied(st.AppliedIDs, u.StreamID))
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `
			UPDATE remote_device_lists SET stream_id = ?, applied_ids = ?, updated_at = ? WHERE user_id = ?`,
			u.StreamID, string(applied), now, u.UserID); err != nil {
			return fmt.Errorf("updating remote device-list state: %w", err)
		}
		_, wake, err = s.deviceChanged(ctx, tx, now, u.UserID)
		return err
	})
	if err != nil {
		return "", err
	}
	s.db.wake(wake)
	return out, nil
}

func (s *deviceStore) ApplyRemoteSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) (devicelists.RemoteOutcome, error) {
	var out devicelists.RemoteOutcome
	var wake []wakeup.Key
	types := make([]string, 0, len(keys))
	for t := range keys {
		types = append(types, t)
	}
	slices.Sort(types)
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		out, wake = devicelists.RemoteIgnored, nil
		now := micros(time.Now())
		if _, tracked, err := remoteState(ctx, tx, userID); err != nil {
			return err
		} else if !tracked {
			out, err = trackIfShared(ctx, tx, now, userID, 0)
			return err
		}
		changed := false
		for _, t := range types {
			n, err := putCrossSigningKey(ctx, tx, userID, t, keys[t])
			if err != nil {
				return err
			}
			changed = changed || n > 0
		}
		if !changed {
			return nil // a replay
		}
		out = devicelists.RemoteApplied
		var err error
		_, wake, err = s.deviceChanged(ctx, tx, now, userID)
		return err
	})
	if err != nil {
		return "", err
	}
	s.db.wake(wake)
	return out, nil
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

func (s *deviceStore) CompleteResync(ctx context.Context, l devicelists.RemoteDeviceList) (devicelists.ResyncResult, error) {
	var res devicelists.ResyncResult
	var wake []wakeup.Key
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		res, wake = devicelists.ResyncResult{}, nil
		now := micros(time.Now())
		var seen int64
		err := tx.QueryRowContext(ctx, `SELECT seen_stream_id FROM remote_device_lists WHERE user_id = ?`, l.UserID).Scan(&seen)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // dropped meanwhile
		}
		if err != nil {
			return fmt.Errorf("reading remote device-list state: %w", err)
		}
		res.Tracked = true
		res.StillStale = l.StreamID < seen
		old, err := deviceKeysOf(ctx, tx, `
			SELECT device_id, display_name, keys FROM remote_devices WHERE user_id = ?`, l.UserID)
		if err != nil {
			return fmt.Errorf("reading remote devices: %w", err)
		}
		cs, err := crossSigningOf(ctx, tx, l.UserID)
		if err != nil {
			return err
		}
		res.Changed = !devicelists.SameDevices(old, l.Devices) ||
			!bytes.Equal(cs[devicelists.MasterKey], l.MasterKey) || !bytes.Equal(cs[devicelists.SelfSigningKey], l.SelfSigningKey)
		if res.Changed {
			if err := replaceRemoteList(ctx, tx, l); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `
			UPDATE remote_device_lists SET stream_id = ?2, applied_ids = '[]', stale = ?3, seen_stream_id = 0,
				failures = CASE WHEN ?3 THEN failures ELSE 0 END,
				retry_at = CASE WHEN ?3 THEN retry_at END, updated_at = ?4
			WHERE user_id = ?1`, l.UserID, l.StreamID, res.StillStale, now); err != nil {
			return fmt.Errorf("updating remote device-list state: %w", err)
		}
		if !res.Changed {
			return nil
		}
		_, wake, err = s.deviceChanged(ctx, tx, now, l.UserID)
		return err
	})
	if err != nil {
		return devicelists.ResyncResult{}, err
	}
	s.db.wake(wake)
	return res, nil
}

// replaceRemoteList writes a snapshot over the cached devices and
// cross-signing keys.
func replaceRemoteList(ctx context.Context, tx *sql.Tx, l devicelists.RemoteDeviceList) error {
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

func (s *deviceStore) RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]devicelists.RemoteDeviceList, error) {
	out := map[string]devicelists.RemoteDeviceList{}
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		var fresh []string
		err := eachChunk(userIDs, func(in string, args []any) error {
			users, err := queryStrings(ctx, tx, `
				SELECT d.user_id FROM remote_device_lists d
				WHERE d.user_id IN `+in+` AND d.stale = 0 AND `+sharedWithLocal("d.user_id"), args...)
			fresh = append(fresh, users...)
			return err
		})
		if err != nil {
			return err
		}
		for _, u := range fresh {
			l := devicelists.RemoteDeviceList{UserID: u}
			if err := tx.QueryRowContext(ctx, `SELECT stream_id FROM remote_device_lists WHERE user_id = ?`, u).Scan(&l.StreamID); err != nil {
				return err
			}
			if l.Devices, err = deviceKeysOf(ctx, tx, `
				SELECT device_id, display_name, keys FROM remote_devices WHERE user_id = ?`, u); err != nil {
				return err
			}
			cs, err := crossSigningOf(ctx, tx, u)
			if err != nil {
				return err
			}
			l.MasterKey, l.SelfSigningKey = cs[devicelists.MasterKey], cs[devicelists.SelfSigningKey]
			out[u] = l
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading remote device lists: %w", err)
	}
	return out, nil
}

// dropRemote forgets the cached lists of the users.
func dropRemote(ctx context.Context, tx *sql.Tx, users []string) error {
	return eachChunk(users, func(in string, args []any) error {
		for _, table := range []string{"remote_devices", "cross_signing_keys", "remote_device_lists"} {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE user_id IN `+in, args...); err != nil {
				return fmt.Errorf("dropping remote device lists: %w", err)
			}
		}
		return nil
	})
}

func (s *deviceStore) SweepRemoteUsers(ctx context.Context, after string, limit int) (string, int, error) {
	var next string
	var dropped int
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		next, dropped = "", 0
		rows, err := tx.QueryContext(ctx, `
			SELECT d.user_id, `+sharedWithLocal("d.user_id")+` FROM remote_device_lists d
			WHERE d.user_id > ? ORDER BY d.user_id LIMIT ?`, after, limit)
		if err != nil {
			return err
		}
		var victims []string
		n := 0
		for rows.Next() {
			var u string
			var shared bool
			if err := rows.Scan(&u, &shared); err != nil {
				rows.Close()
				return err
			}
			n++
			next = u
			if !shared {
				victims = append(victims, u)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if n < limit {
			next = ""
		}
		dropped = len(victims)
		return dropRemote(ctx, tx, victims)
	})
	if err != nil {
		return "", 0, fmt.Errorf("sweeping remote device lists: %w", err)
	}
	return next, dropped, nil
}

func (s *deviceStore) RemoteUserCount(ctx context.Context) (int, error) {
	var n int
	if err := s.db.readers.QueryRowContext(ctx, `SELECT count(*) FROM remote_device_lists`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting remote device lists: %w", err)
	}
	return n, nil
}

// trackRemote starts tracking (stale, due now) remote users of an
// encrypted room who share it with a local user: every remote member when
// all is set (a local user started sharing, or the room became encrypted),
// else only the given users (who started sharing). Users tracked already
// keep their cache.
func trackRemote(ctx context.Context, tx *sql.Tx, now int64, roomID string, all bool, users []string) error {
	in, uargs := inList(users)
	args := append([]any{roomID, all, now}, uargs...)
	_, err := tx.ExecContext(ctx, `
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

// untrackRemote drops the caches of remote users who share no encrypted
// room with a local user any more: every remote member of the room when
// all is set (a local user stopped sharing it), else only the given users
// (who stopped sharing it).
func untrackRemote(ctx context.Context, tx *sql.Tx, roomID string, all bool, users []string) error {
	candidates := slices.Clone(users)
	if all {
		members, err := queryStrings(ctx, tx, `SELECT user_id FROM room_members WHERE room_id = ? AND is_local = 0`, roomID)
		if err != nil {
			return fmt.Errorf("finding remote users no longer shared: %w", err)
		}
		candidates = append(candidates, members...)
	}
	var victims []string
	err := eachChunk(candidates, func(in string, args []any) error {
		v, err := queryStrings(ctx, tx, `
			SELECT d.user_id FROM remote_device_lists d
			WHERE d.user_id IN `+in+` AND NOT `+sharedWithLocal("d.user_id"), args...)
		victims = append(victims, v...)
		return err
	})
	if err != nil {
		return fmt.Errorf("finding remote users no longer shared: %w", err)
	}
	return dropRemote(ctx, tx, victims)
}
