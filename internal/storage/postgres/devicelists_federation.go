package postgres

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// The federation half of device lists. Every transaction here that queues
// outbox rows or takes a stream position holds the device-list stream lock
// (deviceListLockID): outbox positions of a destination therefore commit in
// order, as stream positions do, and the cache of a remote user changes
// under the same lock as the memberships that decide whether it is kept.

// remoteServersSQL lists the servers of the remote users sharing a room,
// encrypted or not, with the local user $1: where its device-list EDUs go.
// The server-server spec wants every server sharing a room told, so a server
// that cached the list through a plaintext room does not keep stale keys
// once the room becomes encrypted. A user id's server is everything after
// its first ':' (localparts have none).
const remoteServersSQL = `
	SELECT DISTINCT substr(m2.user_id, strpos(m2.user_id, ':') + 1) FROM room_members m1
	JOIN room_members m2 ON m2.room_id = m1.room_id
	WHERE m1.user_id = $1 AND m1.membership IN ` + sharingSQL + `
	  AND m2.membership IN ` + sharingSQL + ` AND NOT m2.is_local
	ORDER BY 1`

// sharedWithLocal is a condition: the user in column expression col shares
// an encrypted room with a local user.
func sharedWithLocal(col string) string {
	return `EXISTS (SELECT 1 FROM room_members sr
		JOIN encrypted_rooms se ON se.room_id = sr.room_id
		JOIN room_members sl ON sl.room_id = sr.room_id
		WHERE sr.user_id = ` + col + ` AND sr.membership IN ` + sharingSQL + `
		  AND sl.is_local AND sl.membership IN ` + sharingSQL + `)`
}

func lockStream(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deviceListLockID); err != nil {
		return fmt.Errorf("locking the device-list stream: %w", err)
	}
	return nil
}

// readTx runs fn in a read-only snapshot: all its statements see the same
// commits.
func (db *DB) readTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// queueOutbound queues edu for every server sharing a room with the local
// user and returns their outbox wake-up keys. The caller holds
// the stream lock.
func (s *deviceStore) queueOutbound(ctx context.Context, tx pgx.Tx, userID, eduType string, edu []byte) ([]wakeup.Key, error) {
	rows, err := tx.Query(ctx, remoteServersSQL, userID)
	if err != nil {
		return nil, fmt.Errorf("finding servers sharing a room: %w", err)
	}
	dests, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("finding servers sharing a room: %w", err)
	}
	if len(dests) == 0 {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO device_list_outbox (destination, edu_type, edu)
		SELECT d, $2, $3 FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n`,
		dests, eduType, edu); err != nil {
		return nil, fmt.Errorf("queueing %s: %w", eduType, err)
	}
	keys := make([]wakeup.Key, len(dests))
	for i, d := range dests {
		keys[i] = wakeup.OutboxKey(d)
	}
	if h := s.db.opts.DeviceListHooks.AfterOutboxQueue; h != nil {
		return keys, h(ctx, userID, eduType)
	}
	return keys, nil
}

// localDeviceChanged records a change of a local user's device: a stream
// position, the user's new head, and an m.device_list_update naming the
// previous head for every server sharing a room with the user.
// It returns whom to wake.
func (s *deviceStore) localDeviceChanged(ctx context.Context, tx pgx.Tx, userID string, d devicelists.DeviceUpdate) ([]wakeup.Key, error) {
	pos, wake, err := s.deviceChanged(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	var prev int64
	err = tx.QueryRow(ctx, `SELECT stream_id FROM device_list_heads WHERE user_id = $1`, userID).Scan(&prev)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("reading device-list head: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO device_list_heads (user_id, stream_id) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`, userID, pos); err != nil {
		return nil, fmt.Errorf("storing device-list head: %w", err)
	}
	edu, err := devicelists.DeviceListUpdateEDU(userID, pos, prev, d)
	if err != nil {
		return nil, err
	}
	out, err := s.queueOutbound(ctx, tx, userID, devicelists.EDUDeviceListUpdate, edu)
	if err != nil {
		return nil, err
	}
	return append(wake, out...), nil
}

// queueSigningKeys queues an m.signing_key_update of the local user's
// current master and self-signing keys.
func (s *deviceStore) queueSigningKeys(ctx context.Context, tx pgx.Tx, userID string) ([]wakeup.Key, error) {
	keys, err := crossSigningOf(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	edu, err := devicelists.SigningKeyUpdateEDU(userID, keys[devicelists.MasterKey], keys[devicelists.SelfSigningKey])
	if err != nil {
		return nil, err
	}
	return s.queueOutbound(ctx, tx, userID, devicelists.EDUSigningKeyUpdate, edu)
}

// crossSigningOf reads a user's master and self-signing keys.
func crossSigningOf(ctx context.Context, q pgx.Tx, userID string) (map[string]json.RawMessage, error) {
	rows, err := q.Query(ctx, `
		SELECT key_type, key_json FROM cross_signing_keys
		WHERE user_id = $1 AND key_type IN ('master', 'self_signing')`, userID)
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	out := map[string]json.RawMessage{}
	var t string
	var k []byte
	_, err = pgx.ForEachRow(rows, []any{&t, &k}, func() error {
		out[t] = bytes.Clone(k)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	return out, nil
}

func (s *deviceStore) PeekOutbox(ctx context.Context, destination string, limit int) ([]devicelists.QueuedEDU, error) {
	rows, err := s.db.pool.Query(ctx, `
		SELECT pos, destination, edu_type, edu, enqueued_at FROM device_list_outbox
		WHERE destination = $1 ORDER BY pos LIMIT $2`, destination, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the device-list outbox: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (devicelists.QueuedEDU, error) {
		var q devicelists.QueuedEDU
		var edu []byte
		err := r.Scan(&q.Pos, &q.Destination, &q.Type, &edu, &q.EnqueuedAt)
		q.EDU = edu
		return q, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the device-list outbox: %w", err)
	}
	return out, nil
}

// OutboxDestinations skips from destination to destination over the
// primary key (a loose index scan): one probe per destination, however many
// EDUs each has queued.
func (s *deviceStore) OutboxDestinations(ctx context.Context) ([]string, error) {
	rows, err := s.db.pool.Query(ctx, `
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
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// deleteDeviceListOutboxRows is the one statement that removes sent EDUs
// from the device-list outbox: exactly the listed positions of one
// destination. The federation store runs it inside its fenced transaction.
func deleteDeviceListOutboxRows(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, destination string, positions []int64) (map[string]int, error) {
	out := map[string]int{}
	if len(positions) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `
		DELETE FROM device_list_outbox WHERE destination = $1 AND pos = ANY($2::bigint[])
		RETURNING edu_type`, destination, positions)
	if err != nil {
		return nil, fmt.Errorf("deleting device-list outbox rows: %w", err)
	}
	var t string
	if _, err := pgx.ForEachRow(rows, []any{&t}, func() error {
		out[t]++
		return nil
	}); err != nil {
		return nil, fmt.Errorf("deleting device-list outbox rows: %w", err)
	}
	return out, nil
}

func (s *deviceStore) DeleteOutbox(ctx context.Context, destination string, positions []int64) (map[string]int, error) {
	return deleteDeviceListOutboxRows(ctx, s.db.pool, destination, positions)
}

// ExpireOutbox walks the enqueued_at index over the expired rows only,
// sparing the rows of stored federation transactions.
func (s *deviceStore) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]devicelists.DestinationCount, error) {
	counts, err := expireOutboxRows(ctx, s.db.pool, "device_list_outbox", devicelists.OutboxSource, cutoff, limit)
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
	var oldest *time.Time
	err := s.db.pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM (SELECT 1 FROM device_list_outbox LIMIT $1) t),
		       (SELECT min(enqueued_at) FROM device_list_outbox)`, exactCountBelow).Scan(&b.Pending, &oldest)
	if err != nil {
		return b, fmt.Errorf("reading device-list outbox backlog: %w", err)
	}
	if oldest != nil {
		b.Oldest = *oldest
	}
	return b, nil
}

func (s *deviceStore) UserDeviceList(ctx context.Context, userID string) (devicelists.UserDeviceList, error) {
	l := devicelists.UserDeviceList{UserID: userID}
	err := s.db.readTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT stream_id FROM device_list_heads WHERE user_id = $1`, userID).Scan(&l.StreamID)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT device_id, coalesce(display_name, ''), keys FROM devices
			WHERE user_id = $1 AND deleted_at IS NULL AND keys IS NOT NULL`, userID)
		if err != nil {
			return err
		}
		l.Devices, err = collectDeviceKeys(rows, userID)
		if err != nil {
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

// collectDeviceKeys reads (device_id, display name, keys) rows of one user,
// sorted by device id in byte order.
func collectDeviceKeys(rows pgx.Rows, userID string) ([]devicelists.DeviceKeys, error) {
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (devicelists.DeviceKeys, error) {
		d := devicelists.DeviceKeys{UserID: userID}
		var keys []byte
		err := r.Scan(&d.DeviceID, &d.DisplayName, &keys)
		if keys != nil {
			d.Keys = keys
		}
		return d, err
	})
	slices.SortFunc(out, func(a, b devicelists.DeviceKeys) int { return cmp.Compare(a.DeviceID, b.DeviceID) })
	return out, err
}

// ---------------------------------------------------------------------------
// The remote cache.
// ---------------------------------------------------------------------------

// remoteState reads and locks a tracked user's row.
func remoteState(ctx context.Context, tx pgx.Tx, userID string) (devicelists.RemoteState, bool, error) {
	var st devicelists.RemoteState
	err := tx.QueryRow(ctx, `
		SELECT stream_id, applied_ids, stale FROM remote_device_lists WHERE user_id = $1 FOR UPDATE`,
		userID).Scan(&st.StreamID, &st.AppliedIDs, &st.Stale)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("reading remote device-list state: %w", err)
	}
	return st, true, nil
}

// trackIfShared starts tracking an untracked user who shares an encrypted
// room with a local user: stale, due now, with seen as the newest stream_id
// seen. Anyone else is ignored.
func trackIfShared(ctx context.Context, tx pgx.Tx, userID string, seen int64) (devicelists.RemoteOutcome, error) {
	tag, err := tx.Exec(ctx, `
		INSERT INTO remote_device_lists (user_id, seen_stream_id, retry_at)
		SELECT $1, $2, now() WHERE `+sharedWithLocal("$1::text")+`
		ON CONFLICT DO NOTHING`, userID, seen)
	if err != nil {
		return "", fmt.Errorf("tracking remote user: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return devicelists.RemoteIgnored, nil
	}
	return devicelists.RemoteResync, nil
}

// markStale makes a resync due (now, unless one is due already: its backoff
// stands) and remembers the stream_id that could not be applied.
func markStale(ctx context.Context, tx pgx.Tx, userID string, seen int64) error {
	_, err := tx.Exec(ctx, `
		UPDATE remote_device_lists SET
			seen_stream_id = greatest(seen_stream_id, $2),
			retry_at = CASE WHEN stale THEN retry_at ELSE now() END,
			failures = CASE WHEN stale THEN failures ELSE 0 END,
			stale = true, updated_at = now()
		WHERE user_id = $1`, userID, seen)
	if err != nil {
		return fmt.Errorf("marking remote device list stale: %w", err)
	}
	return nil
}

func (s *deviceStore) ApplyRemoteUpdate(ctx context.Context, u devicelists.RemoteUpdate) (devicelists.RemoteOutcome, error) {
	var out devicelists.RemoteOutcome
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		out, wake = "", nil
		if err := lockStream(ctx, tx); err != nil {
			return err
		}
		st, tracked, err := remoteState(ctx, tx, u.UserID)
		if err != nil {
			return err
		}
		if !tracked {
			out, err = trackIfShared(ctx, tx, u.UserID, u.StreamID)
			return err
		}
		out = devicelists.DecideRemoteUpdate(st, u)
		switch out {
		case devicelists.RemoteResync:
			return markStale(ctx, tx, u.UserID, u.StreamID)
		case devicelists.RemoteApplied:
		default:
			return nil
		}
		if u.Deleted {
			_, err = tx.Exec(ctx, `DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2`, u.UserID, u.DeviceID)
		} else {
			var name *string
			if u.DisplayName != "" {
				name = &u.DisplayName
			}
			_, err = tx.Exec(ctx, `
				INSERT INTO remote_devices (user_id, device_id, keys, display_name) VALUES ($1, $2, $3, $4)
				ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys, display_name = excluded.display_name`,
				u.UserID, u.DeviceID, []byte(u.Keys), name)
		}
		if err != nil {
			return fmt.Errorf("updating remote device: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE remote_device_lists SET stream_id = $2, applied_ids = $3, updated_at = now() WHERE user_id = $1`,
			u.UserID, u.StreamID, devicelists.PushApplied(st.AppliedIDs, u.StreamID)); err != nil {
			return fmt.Errorf("updating remote device-list state: %w", err)
		}
		if _, wake, err = s.deviceChanged(ctx, tx, u.UserID); err != nil {
			return err
		}
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return "", err
	}
	s.db.wakeLocal(wake)
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
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		out, wake = devicelists.RemoteIgnored, nil
		if err := lockStream(ctx, tx); err != nil {
			return err
		}
		if _, tracked, err := remoteState(ctx, tx, userID); err != nil {
			return err
		} else if !tracked {
			out, err = trackIfShared(ctx, tx, userID, 0)
			return err
		}
		changed := false
		for _, t := range types {
			tag, err := tx.Exec(ctx, `
				INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json
				WHERE cross_signing_keys.key_json <> excluded.key_json`, userID, t, []byte(keys[t]))
			if err != nil {
				return fmt.Errorf("storing remote %s key: %w", t, err)
			}
			changed = changed || tag.RowsAffected() > 0
		}
		if !changed {
			return nil // a replay
		}
		out = devicelists.RemoteApplied
		var err error
		if _, wake, err = s.deviceChanged(ctx, tx, userID); err != nil {
			return err
		}
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return "", err
	}
	s.db.wakeLocal(wake)
	return out, nil
}

// ClaimResyncs skips rows another replica is claiming at the same moment.
func (s *deviceStore) ClaimResyncs(ctx context.Context, limit int, lease time.Duration) ([]devicelists.ResyncJob, error) {
	rows, err := s.db.pool.Query(ctx, `
		UPDATE remote_device_lists SET retry_at = now() + $2 * interval '1 microsecond'
		WHERE user_id IN (
			SELECT user_id FROM remote_device_lists WHERE stale AND retry_at <= now()
			ORDER BY retry_at LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING user_id, failures`, limit, lease.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("claiming resyncs: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (devicelists.ResyncJob, error) {
		var j devicelists.ResyncJob
		err := r.Scan(&j.UserID, &j.Failures)
		return j, err
	})
}

func (s *deviceStore) CompleteResync(ctx context.Context, l devicelists.RemoteDeviceList) (devicelists.ResyncResult, error) {
	var res devicelists.ResyncResult
	var wake []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		res, wake = devicelists.ResyncResult{}, nil
		if err := lockStream(ctx, tx); err != nil {
			return err
		}
		var seen int64
		err := tx.QueryRow(ctx, `SELECT seen_stream_id FROM remote_device_lists WHERE user_id = $1 FOR UPDATE`, l.UserID).Scan(&seen)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // dropped meanwhile
		}
		if err != nil {
			return fmt.Errorf("reading remote device-list state: %w", err)
		}
		res.Tracked = true
		res.StillStale = l.StreamID < seen
		rows, err := tx.Query(ctx, `
			SELECT device_id, coalesce(display_name, ''), keys FROM remote_devices WHERE user_id = $1`, l.UserID)
		if err != nil {
			return fmt.Errorf("reading remote devices: %w", err)
		}
		old, err := collectDeviceKeys(rows, l.UserID)
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
		if _, err := tx.Exec(ctx, `
			UPDATE remote_device_lists SET stream_id = $2, applied_ids = '{}', stale = $3, seen_stream_id = 0,
				failures = CASE WHEN $3 THEN failures ELSE 0 END,
				retry_at = CASE WHEN $3 THEN retry_at END, updated_at = now()
			WHERE user_id = $1`, l.UserID, l.StreamID, res.StillStale); err != nil {
			return fmt.Errorf("updating remote device-list state: %w", err)
		}
		if !res.Changed {
			return nil
		}
		if _, wake, err = s.deviceChanged(ctx, tx, l.UserID); err != nil {
			return err
		}
		return notifyKeys(ctx, tx, wake)
	})
	if err != nil {
		return devicelists.ResyncResult{}, err
	}
	s.db.wakeLocal(wake)
	return res, nil
}

// replaceRemoteList writes a snapshot over the cached devices and
// cross-signing keys.
func replaceRemoteList(ctx context.Context, tx pgx.Tx, l devicelists.RemoteDeviceList) error {
	ids := make([]string, len(l.Devices))
	keys := make([][]byte, len(l.Devices))
	names := make([]*string, len(l.Devices))
	for i, d := range l.Devices {
		ids[i], keys[i] = d.DeviceID, d.Keys
		if d.DisplayName != "" {
			names[i] = &d.DisplayName
		}
	}
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM remote_devices WHERE user_id = $1`, l.UserID)
	b.Queue(`
		INSERT INTO remote_devices (user_id, device_id, keys, display_name)
		SELECT $1, d, k, n FROM unnest($2::text[], $3::bytea[], $4::text[]) AS t(d, k, n)`, l.UserID, ids, keys, names)
	b.Queue(`DELETE FROM cross_signing_keys WHERE user_id = $1 AND key_type IN ('master', 'self_signing')`, l.UserID)
	for t, k := range map[string]json.RawMessage{devicelists.MasterKey: l.MasterKey, devicelists.SelfSigningKey: l.SelfSigningKey} {
		if k != nil {
			b.Queue(`INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)`, l.UserID, t, []byte(k))
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("replacing remote device list: %w", err)
	}
	return nil
}

func (s *deviceStore) FailResync(ctx context.Context, userID string, failures int, retryIn time.Duration) error {
	_, err := s.db.pool.Exec(ctx, `
		UPDATE remote_device_lists SET failures = $2, retry_at = now() + $3 * interval '1 microsecond'
		WHERE user_id = $1 AND stale`, userID, failures, retryIn.Microseconds())
	if err != nil {
		return fmt.Errorf("recording failed resync: %w", err)
	}
	return nil
}

// ResyncIfUnknownDevice is one statement: the row lock orders it with the
// writers of the cache, and a resync it makes due needlessly (a racing
// update brought the device) costs one fetch, never a wrong cache.
func (s *deviceStore) ResyncIfUnknownDevice(ctx context.Context, userID, deviceID string) (bool, error) {
	tag, err := s.db.pool.Exec(ctx, `
		UPDATE remote_device_lists SET stale = true, retry_at = now(), failures = 0, updated_at = now()
		WHERE user_id = $1 AND NOT stale
		  AND NOT EXISTS (SELECT 1 FROM remote_devices WHERE user_id = $1 AND device_id = $2)`, userID, deviceID)
	if err != nil {
		return false, fmt.Errorf("marking remote device list stale: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

func (s *deviceStore) RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]devicelists.RemoteDeviceList, error) {
	out := map[string]devicelists.RemoteDeviceList{}
	err := s.db.readTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT d.user_id, d.stream_id FROM remote_device_lists d
			WHERE d.user_id = ANY($1) AND NOT d.stale AND `+sharedWithLocal("d.user_id"), userIDs)
		if err != nil {
			return err
		}
		var fresh []string
		var u string
		var sid int64
		if _, err := pgx.ForEachRow(rows, []any{&u, &sid}, func() error {
			fresh = append(fresh, u)
			out[u] = devicelists.RemoteDeviceList{UserID: u, StreamID: sid}
			return nil
		}); err != nil {
			return err
		}
		if len(fresh) == 0 {
			return nil
		}
		rows, err = tx.Query(ctx, `
			SELECT user_id, device_id, coalesce(display_name, ''), keys FROM remote_devices
			WHERE user_id = ANY($1) ORDER BY user_id, device_id`, fresh)
		if err != nil {
			return err
		}
		var d devicelists.DeviceKeys
		var keys []byte
		if _, err := pgx.ForEachRow(rows, []any{&d.UserID, &d.DeviceID, &d.DisplayName, &keys}, func() error {
			l := out[d.UserID]
			dk := d
			if keys != nil {
				dk.Keys = bytes.Clone(keys)
			}
			l.Devices = append(l.Devices, dk)
			out[d.UserID] = l
			return nil
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `
			SELECT user_id, key_type, key_json FROM cross_signing_keys
			WHERE user_id = ANY($1) AND key_type IN ('master', 'self_signing')`, fresh)
		if err != nil {
			return err
		}
		var t string
		var k []byte
		_, err = pgx.ForEachRow(rows, []any{&u, &t, &k}, func() error {
			l := out[u]
			if t == devicelists.MasterKey {
				l.MasterKey = bytes.Clone(k)
			} else {
				l.SelfSigningKey = bytes.Clone(k)
			}
			out[u] = l
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading remote device lists: %w", err)
	}
	return out, nil
}

// dropRemote forgets the cached lists of the users.
func dropRemote(ctx context.Context, tx pgx.Tx, users []string) error {
	if len(users) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM remote_devices WHERE user_id = ANY($1)`, users)
	b.Queue(`DELETE FROM cross_signing_keys WHERE user_id = ANY($1)`, users)
	b.Queue(`DELETE FROM remote_device_lists WHERE user_id = ANY($1)`, users)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("dropping remote device lists: %w", err)
	}
	return nil
}

func (s *deviceStore) SweepRemoteUsers(ctx context.Context, after string, limit int) (string, int, error) {
	var next string
	var dropped int
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		next, dropped = "", 0
		if err := lockStream(ctx, tx); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT d.user_id, `+sharedWithLocal("d.user_id")+` FROM remote_device_lists d
			WHERE d.user_id > $1 ORDER BY d.user_id LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		var victims []string
		var u string
		var shared bool
		n := 0
		if _, err := pgx.ForEachRow(rows, []any{&u, &shared}, func() error {
			n++
			next = u
			if !shared {
				victims = append(victims, u)
			}
			return nil
		}); err != nil {
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
	if err := s.db.pool.QueryRow(ctx, `SELECT count(*) FROM remote_device_lists`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting remote device lists: %w", err)
	}
	return n, nil
}

// trackRemote starts tracking (stale, due now) remote users of an
// encrypted room who share it with a local user: every remote member when
// all is set (a local user started sharing, or the room became encrypted),
// else only the given users (who started sharing). Users tracked already
// keep their cache.
func trackRemote(ctx context.Context, tx pgx.Tx, roomID string, all bool, users []string) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO remote_device_lists (user_id, retry_at)
		SELECT DISTINCT m.user_id, now() FROM room_members m
		WHERE m.room_id = $1 AND NOT m.is_local AND m.membership IN `+sharingSQL+`
		  AND ($2 OR m.user_id = ANY($3))
		  AND EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = $1)
		  AND EXISTS (SELECT 1 FROM room_members l WHERE l.room_id = $1 AND l.is_local AND l.membership IN `+sharingSQL+`)
		ON CONFLICT DO NOTHING`, roomID, all, users)
	if err != nil {
		return fmt.Errorf("tracking remote users: %w", err)
	}
	return nil
}

// untrackRemote drops the caches of remote users who share no encrypted
// room with a local user any more: every remote member of the room when
// all is set (a local user stopped sharing it), else only the given users
// (who stopped sharing it).
func untrackRemote(ctx context.Context, tx pgx.Tx, roomID string, all bool, users []string) error {
	rows, err := tx.Query(ctx, `
		SELECT c.user_id FROM (
			SELECT user_id FROM room_members WHERE $2 AND room_id = $1 AND NOT is_local
			UNION SELECT unnest($3::text[])
		) c
		WHERE EXISTS (SELECT 1 FROM remote_device_lists d WHERE d.user_id = c.user_id)
		  AND NOT `+sharedWithLocal("c.user_id"), roomID, all, users)
	if err != nil {
		return fmt.Errorf("finding remote users no longer shared: %w", err)
	}
	victims, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("finding remote users no longer shared: %w", err)
	}
	return dropRemote(ctx, tx, victims)
}
