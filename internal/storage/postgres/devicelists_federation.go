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
)

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

// readTx runs fn in a read-only snapshot: all its statements see the same
// commits.
func (db *DB) readTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

func (t deviceTx) RemoteServers(ctx context.Context, userID string) ([]string, error) {
	return t.strings(ctx, "finding servers sharing a room", remoteServersSQL, userID)
}

func (t deviceTx) QueueOutbound(ctx context.Context, destinations []string, eduType string, edu []byte) error {
	if _, err := t.tx.Exec(ctx, `
		INSERT INTO device_list_outbox (destination, edu_type, edu)
		SELECT d, $2, $3 FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n`,
		destinations, eduType, edu); err != nil {
		return fmt.Errorf("queueing %s: %w", eduType, err)
	}
	return nil
}

func (t deviceTx) CrossSigningOf(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT user_id, key_type, key_json FROM cross_signing_keys
		WHERE user_id = ANY($1) AND key_type IN ('master', 'self_signing')`, userIDs)
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	out := map[string]map[string]json.RawMessage{}
	var u, kt string
	var k []byte
	_, err = pgx.ForEachRow(rows, []any{&u, &kt, &k}, func() error {
		if out[u] == nil {
			out[u] = map[string]json.RawMessage{}
		}
		out[u][kt] = bytes.Clone(k)
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

func (t deviceTx) RemoteState(ctx context.Context, userID string) (devicelists.RemoteState, bool, error) {
	var st devicelists.RemoteState
	err := t.tx.QueryRow(ctx, `
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

func (t deviceTx) RemoteSeen(ctx context.Context, userID string) (int64, bool, error) {
	var seen int64
	err := t.tx.QueryRow(ctx, `SELECT seen_stream_id FROM remote_device_lists WHERE user_id = $1 FOR UPDATE`, userID).Scan(&seen)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading remote device-list state: %w", err)
	}
	return seen, true, nil
}

func (t deviceTx) TrackIfShared(ctx context.Context, userID string, seen int64) (bool, error) {
	tag, err := t.tx.Exec(ctx, `
		INSERT INTO remote_device_lists (user_id, seen_stream_id, retry_at)
		SELECT $1, $2, now() WHERE `+sharedWithLocal("$1::text")+`
		ON CONFLICT DO NOTHING`, userID, seen)
	if err != nil {
		return false, fmt.Errorf("tracking remote user: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

func (t deviceTx) MarkStale(ctx context.Context, userID string, seen int64) error {
	_, err := t.tx.Exec(ctx, `
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

func (t deviceTx) UpsertRemoteDevice(ctx context.Context, d devicelists.DeviceKeys) error {
	var name *string
	if d.DisplayName != "" {
		name = &d.DisplayName
	}
	if _, err := t.tx.Exec(ctx, `
		INSERT INTO remote_devices (user_id, device_id, keys, display_name) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys, display_name = excluded.display_name`,
		d.UserID, d.DeviceID, []byte(d.Keys), name); err != nil {
		return fmt.Errorf("updating remote device: %w", err)
	}
	return nil
}

func (t deviceTx) DeleteRemoteDevice(ctx context.Context, userID, deviceID string) error {
	if _, err := t.tx.Exec(ctx, `DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
		return fmt.Errorf("updating remote device: %w", err)
	}
	return nil
}

func (t deviceTx) SetRemoteApplied(ctx context.Context, userID string, streamID int64, applied []int64) error {
	if _, err := t.tx.Exec(ctx, `
		UPDATE remote_device_lists SET stream_id = $2, applied_ids = $3, updated_at = now() WHERE user_id = $1`,
		userID, streamID, applied); err != nil {
		return fmt.Errorf("updating remote device-list state: %w", err)
	}
	return nil
}

func (t deviceTx) RemoteDevices(ctx context.Context, userID string) ([]devicelists.DeviceKeys, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT device_id, coalesce(display_name, ''), keys FROM remote_devices WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("reading remote devices: %w", err)
	}
	old, err := collectDeviceKeys(rows, userID)
	if err != nil {
		return nil, fmt.Errorf("reading remote devices: %w", err)
	}
	return old, nil
}

func (t deviceTx) FinishResync(ctx context.Context, userID string, streamID int64, stale bool) error {
	if _, err := t.tx.Exec(ctx, `
		UPDATE remote_device_lists SET stream_id = $2, applied_ids = '{}', stale = $3, seen_stream_id = 0,
			failures = CASE WHEN $3 THEN failures ELSE 0 END,
			retry_at = CASE WHEN $3 THEN retry_at END, updated_at = now()
		WHERE user_id = $1`, userID, streamID, stale); err != nil {
		return fmt.Errorf("updating remote device-list state: %w", err)
	}
	return nil
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

func (t deviceTx) ReplaceRemoteList(ctx context.Context, l devicelists.RemoteDeviceList) error {
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
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
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

func (t deviceTx) FreshRemoteLists(ctx context.Context, userIDs []string) ([]devicelists.RemoteDeviceList, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT d.user_id, d.stream_id FROM remote_device_lists d
		WHERE d.user_id = ANY($1) AND NOT d.stale AND `+sharedWithLocal("d.user_id"), userIDs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (devicelists.RemoteDeviceList, error) {
		var l devicelists.RemoteDeviceList
		err := r.Scan(&l.UserID, &l.StreamID)
		return l, err
	})
}

func (t deviceTx) RemoteDevicesOf(ctx context.Context, userIDs []string) ([]devicelists.DeviceKeys, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT user_id, device_id, coalesce(display_name, ''), keys FROM remote_devices
		WHERE user_id = ANY($1) ORDER BY user_id, device_id`, userIDs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[devicelists.DeviceKeys])
}

func (t deviceTx) DropRemote(ctx context.Context, users []string) error {
	if len(users) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM remote_devices WHERE user_id = ANY($1)`, users)
	b.Queue(`DELETE FROM cross_signing_keys WHERE user_id = ANY($1)`, users)
	b.Queue(`DELETE FROM remote_device_lists WHERE user_id = ANY($1)`, users)
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("dropping remote device lists: %w", err)
	}
	return nil
}

func (t deviceTx) RemoteUsersAfter(ctx context.Context, after string, limit int) ([]devicelists.TrackedUser, error) {
	rows, err := t.tx.Query(ctx, `
		SELECT d.user_id, `+sharedWithLocal("d.user_id")+` FROM remote_device_lists d
		WHERE d.user_id > $1 ORDER BY d.user_id LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[devicelists.TrackedUser])
}

func (s *deviceStore) RemoteUserCount(ctx context.Context) (int, error) {
	var n int
	if err := s.db.pool.QueryRow(ctx, `SELECT count(*) FROM remote_device_lists`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting remote device lists: %w", err)
	}
	return n, nil
}

func (t deviceTx) TrackRemote(ctx context.Context, roomID string, all bool, users []string) error {
	_, err := t.tx.Exec(ctx, `
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

func (t deviceTx) UnsharedRemote(ctx context.Context, roomID string, all bool, users []string) ([]string, error) {
	return t.strings(ctx, "finding remote users no longer shared", `
		SELECT c.user_id FROM (
			SELECT user_id FROM room_members WHERE $2 AND room_id = $1 AND NOT is_local
			UNION SELECT unnest($3::text[])
		) c
		WHERE EXISTS (SELECT 1 FROM remote_device_lists d WHERE d.user_id = c.user_id)
		  AND NOT `+sharedWithLocal("c.user_id"), roomID, all, users)
}
