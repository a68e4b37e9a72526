package sqlstmt

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// DeviceTx is the devicelists.Tx statements the dialects share, on a
// transaction's Conn. A backend embeds it and adds the rest (LockStream,
// UpsertDevice, UpsertMemberships, ReplaceRemoteList).
type DeviceTx struct{ C Conn }

// sharing is devicelists.Sharing in SQL: the memberships clients encrypt
// for.
const sharing = `('join', 'invite', 'knock')`

// sharedWithLocal is a condition: the user in column expression col shares
// an encrypted room with a local user.
func sharedWithLocal(col string) string {
	return `EXISTS (SELECT 1 FROM room_members sr
		JOIN encrypted_rooms se ON se.room_id = sr.room_id
		JOIN room_members sl ON sl.room_id = sr.room_id
		WHERE sr.user_id = ` + col + ` AND sr.membership IN ` + sharing + `
		  AND sl.is_local AND sl.membership IN ` + sharing + `)`
}

// sharedUsers selects the user $1 and every user sharing an encrypted
// room with them.
const sharedUsers = `
	SELECT $1::text
	UNION
	SELECT m2.user_id FROM room_members m1
	JOIN encrypted_rooms e ON e.room_id = m1.room_id
	JOIN room_members m2 ON m2.room_id = m1.room_id
	WHERE m1.user_id = $1 AND m1.membership IN ` + sharing + ` AND m2.membership IN ` + sharing

var (
	appendStream = New(`
		INSERT INTO device_list_stream (kind, user_id, room_id, created_at) VALUES ($1, $2, $3, {now}) RETURNING pos`)
	localSharers = New(`
		SELECT DISTINCT m2.user_id FROM room_members m1
		JOIN encrypted_rooms e ON e.room_id = m1.room_id
		JOIN room_members m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership IN ` + sharing + `
		  AND m2.membership IN ` + sharing + ` AND m2.is_local`)
	roomLocals = New(`SELECT user_id FROM room_members WHERE room_id = $1 AND is_local`)
	tokenTaken = New(`
		SELECT EXISTS (SELECT 1 FROM devices
			WHERE token_hash = $1 AND NOT (user_id = $2 AND device_id = $3))`)
	liveDevice = New(`
		SELECT nid, display_name, keys, dehydrated_data IS NOT NULL FROM devices
		WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL {forupdate}`)
	// tombstoneDevice frees the token and drops a dehydrated device's data
	// (private keys, encrypted: nobody reads them again).
	tombstoneDevice = New(`
		UPDATE devices SET deleted_at = {now}, token_hash = NULL, dehydrated_data = NULL
		WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL
		RETURNING nid, display_name`)
	liveDeviceKeys = New(`
		SELECT device_id, coalesce(display_name, ''), keys FROM devices
		WHERE user_id = $1 AND deleted_at IS NULL AND keys IS NOT NULL`)
	head    = New(`SELECT stream_id FROM device_list_heads WHERE user_id = $1`)
	setHead = New(`
		INSERT INTO device_list_heads (user_id, stream_id) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`)
	// remoteServers lists the servers of the remote users sharing a room,
	// encrypted or not, with the local user $1: where its device-list EDUs
	// go. The server-server spec wants every server sharing a room told, so
	// a server that cached the list through a plaintext room does not keep
	// stale keys once the room becomes encrypted. A user id's server is
	// everything after its first ':' (localparts have none).
	remoteServers = New(`
		SELECT DISTINCT substr(m2.user_id, strpos(m2.user_id, ':') + 1) FROM room_members m1
		JOIN room_members m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership IN ` + sharing + `
		  AND m2.membership IN ` + sharing + ` AND NOT m2.is_local
		ORDER BY 1`)
	queueOutbound = Split(`
		INSERT INTO device_list_outbox (destination, edu_type, edu, enqueued_at)
		SELECT d, $2, $3, {now} FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n`, `
		INSERT INTO device_list_outbox (destination, edu_type, edu, enqueued_at)
		SELECT value, $2, $3, {now} FROM json_each($1) ORDER BY key`)
	// putCrossSigningKey's WHERE makes storing the same key again touch no
	// row.
	putCrossSigningKey = New(`
		INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json
		WHERE cross_signing_keys.key_json <> excluded.key_json`)
	crossSigningOf = New(`
		SELECT user_id, key_type, key_json FROM cross_signing_keys
		WHERE user_id {in $1} AND key_type IN ('master', 'self_signing')`)
	sharedWith    = New(sharedUsers)
	deviceChanges = New(`
		SELECT DISTINCT user_id FROM device_list_stream
		WHERE pos > $1 AND pos <= $2 AND kind = 'device' AND user_id {in $3}`)
	roomChanges = New(`
		SELECT s.kind, coalesce(s.user_id, ''), s.room_id FROM device_list_stream s
		WHERE s.pos > $1 AND s.pos <= $2 AND s.kind IN ('membership', 'encryption')
		  AND s.room_id IN (SELECT room_id FROM room_members WHERE user_id = $3)`)
	roomMembers       = New(`SELECT DISTINCT user_id FROM room_members WHERE room_id {in $1}`)
	markRoomEncrypted = New(`INSERT INTO encrypted_rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING`)
	roomEncrypted     = New(`SELECT EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = $1)`)
	trackRemote       = New(`
		INSERT INTO remote_device_lists (user_id, retry_at, updated_at)
		SELECT DISTINCT m.user_id, {now}, {now} FROM room_members m
		WHERE m.room_id = $1 AND NOT m.is_local AND m.membership IN ` + sharing + `
		  AND ($2 OR m.user_id {in $3})
		  AND EXISTS (SELECT 1 FROM encrypted_rooms WHERE room_id = $1)
		  AND EXISTS (SELECT 1 FROM room_members l WHERE l.room_id = $1 AND l.is_local AND l.membership IN ` + sharing + `)
		ON CONFLICT DO NOTHING`)
	unsharedRemote = New(`
		SELECT c.user_id FROM (
			SELECT user_id FROM room_members WHERE $2 AND room_id = $1 AND NOT is_local
			UNION {rows $3}
		) c
		WHERE EXISTS (SELECT 1 FROM remote_device_lists d WHERE d.user_id = c.user_id)
		  AND NOT ` + sharedWithLocal("c.user_id"))
	dropRemote = []*Stmt{
		New(`DELETE FROM remote_devices WHERE user_id {in $1}`),
		New(`DELETE FROM cross_signing_keys WHERE user_id {in $1}`),
		New(`DELETE FROM remote_device_lists WHERE user_id {in $1}`),
	}
	remoteUsersAfter = New(`
		SELECT d.user_id, ` + sharedWithLocal("d.user_id") + ` FROM remote_device_lists d
		WHERE d.user_id > $1 ORDER BY d.user_id LIMIT $2`)
	remoteState = New(`
		SELECT stream_id, applied_ids, stale FROM remote_device_lists WHERE user_id = $1 {forupdate}`)
	remoteSeen    = New(`SELECT seen_stream_id FROM remote_device_lists WHERE user_id = $1 {forupdate}`)
	trackIfShared = New(`
		INSERT INTO remote_device_lists (user_id, seen_stream_id, retry_at, updated_at)
		SELECT $1, $2, {now}, {now} WHERE ` + sharedWithLocal("$1::text") + `
		ON CONFLICT DO NOTHING`)
	markStale = New(`
		UPDATE remote_device_lists SET
			seen_stream_id = greatest(seen_stream_id, $2),
			retry_at = CASE WHEN stale THEN retry_at ELSE {now} END,
			failures = CASE WHEN stale THEN failures ELSE 0 END,
			stale = TRUE, updated_at = {now}
		WHERE user_id = $1`)
	upsertRemoteDevice = New(`
		INSERT INTO remote_devices (user_id, device_id, keys, display_name) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys, display_name = excluded.display_name`)
	deleteRemoteDevice = New(`DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2`)
	setRemoteApplied   = New(`
		UPDATE remote_device_lists SET stream_id = $2, applied_ids = $3, updated_at = {now} WHERE user_id = $1`)
	freshRemoteLists = New(`
		SELECT d.user_id, d.stream_id FROM remote_device_lists d
		WHERE d.user_id {in $1} AND NOT d.stale AND ` + sharedWithLocal("d.user_id"))
	remoteDevicesOf = New(`
		SELECT user_id, device_id, coalesce(display_name, ''), keys FROM remote_devices
		WHERE user_id {in $1} ORDER BY user_id, device_id`)
	remoteDevices = New(`
		SELECT device_id, coalesce(display_name, ''), keys FROM remote_devices WHERE user_id = $1`)
	finishResync = New(`
		UPDATE remote_device_lists SET stream_id = $2, applied_ids = $4, stale = $3, seen_stream_id = 0,
			failures = CASE WHEN $3 THEN failures ELSE 0 END,
			retry_at = CASE WHEN $3 THEN retry_at END, updated_at = {now}
		WHERE user_id = $1`)
	// pruneOldest deletes the oldest positions created before $1. On
	// SQLite the writer's turn keeps any position from committing below the
	// new pruning point meanwhile; and AUTOINCREMENT never hands a pruned
	// position out again, so the head (which StreamState takes from the
	// pruning point once the stream is empty) never goes back.
	pruneOldest = Split(`
		DELETE FROM device_list_stream WHERE pos = ANY (ARRAY (
			SELECT pos FROM (SELECT pos, created_at FROM device_list_stream ORDER BY pos LIMIT $2) oldest
			WHERE created_at < $1))
		RETURNING pos`, `
		DELETE FROM device_list_stream WHERE pos IN (
			SELECT pos FROM (SELECT pos, created_at FROM device_list_stream ORDER BY pos LIMIT $2)
			WHERE created_at < $1)
		RETURNING pos`)
	raisePrunedBelow = New(`UPDATE meta SET device_list_pruned_below = greatest(device_list_pruned_below, $1)`)
)

// nullIfEmpty is NULL for "".
func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (t DeviceTx) AppendStream(ctx context.Context, kind, userID, roomID string) (int64, error) {
	var pos int64
	if err := t.C.QueryRow(ctx, appendStream, kind, nullIfEmpty(userID), nullIfEmpty(roomID)).Scan(&pos); err != nil {
		return 0, fmt.Errorf("appending to the device-list stream: %w", err)
	}
	return pos, nil
}

// strings runs a query of one text column and returns its values.
func (t DeviceTx) strings(ctx context.Context, what string, s *Stmt, args ...any) ([]string, error) {
	out, err := Strings(ctx, t.C, s, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// changed runs a statement and reports whether it changed a row.
func (t DeviceTx) changed(ctx context.Context, what string, s *Stmt, args ...any) (bool, error) {
	n, err := t.C.Exec(ctx, s, args...)
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	return n > 0, nil
}

// exec runs a statement.
func (t DeviceTx) exec(ctx context.Context, what string, s *Stmt, args ...any) error {
	_, err := t.changed(ctx, what, s, args...)
	return err
}

func (t DeviceTx) LocalSharers(ctx context.Context, userID string) ([]string, error) {
	return t.strings(ctx, "finding users sharing a room", localSharers, userID)
}

func (t DeviceTx) RoomLocals(ctx context.Context, roomID string) ([]string, error) {
	return t.strings(ctx, "finding local members", roomLocals, roomID)
}

func (t DeviceTx) TokenTaken(ctx context.Context, tokenHash []byte, userID, deviceID string) (bool, error) {
	var taken bool
	if err := t.C.QueryRow(ctx, tokenTaken, tokenHash, userID, deviceID).Scan(&taken); err != nil {
		return false, fmt.Errorf("checking the token is free: %w", err)
	}
	return taken, nil
}

func (t DeviceTx) LiveDevice(ctx context.Context, userID, deviceID string) (devicelists.StoredDevice, bool, error) {
	var d devicelists.StoredDevice
	err := t.C.QueryRow(ctx, liveDevice, userID, deviceID).Scan(&d.NID, &d.DisplayName, &d.Keys, &d.Dehydrated)
	if IsNoRows(err) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("looking up device: %w", err)
	}
	return d, true, nil
}

func (t DeviceTx) TombstoneDevice(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	d := devicelists.Device{UserID: userID, DeviceID: deviceID}
	var name *string
	err := t.C.QueryRow(ctx, tombstoneDevice, userID, deviceID).Scan(&d.NID, &name)
	if IsNoRows(err) {
		return d, devicelists.ErrNotFound
	}
	if name != nil {
		d.DisplayName = *name
	}
	return d, err
}

// deviceKeysOf reads (device_id, display name, keys) rows of one user,
// sorted by device id in byte order.
func (t DeviceTx) deviceKeysOf(ctx context.Context, s *Stmt, userID string) ([]devicelists.DeviceKeys, error) {
	out, err := Collect(ctx, t.C, s, []any{userID}, func(r Rows) (devicelists.DeviceKeys, error) {
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

func (t DeviceTx) LiveDeviceKeys(ctx context.Context, userID string) ([]devicelists.DeviceKeys, error) {
	return t.deviceKeysOf(ctx, liveDeviceKeys, userID)
}

func (t DeviceTx) Head(ctx context.Context, userID string) (int64, error) {
	var pos int64
	if err := t.C.QueryRow(ctx, head, userID).Scan(&pos); err != nil && !IsNoRows(err) {
		return 0, fmt.Errorf("reading device-list head: %w", err)
	}
	return pos, nil
}

func (t DeviceTx) SetHead(ctx context.Context, userID string, pos int64) error {
	return t.exec(ctx, "storing device-list head", setHead, userID, pos)
}

func (t DeviceTx) RemoteServers(ctx context.Context, userID string) ([]string, error) {
	return t.strings(ctx, "finding servers sharing a room", remoteServers, userID)
}

func (t DeviceTx) QueueOutbound(ctx context.Context, destinations []string, eduType string, edu []byte) error {
	return t.exec(ctx, "queueing "+eduType, queueOutbound, destinations, eduType, edu)
}

func (t DeviceTx) PutCrossSigningKey(ctx context.Context, userID, keyType string, key json.RawMessage) (bool, error) {
	return t.changed(ctx, "storing "+keyType+" key", putCrossSigningKey, userID, keyType, []byte(key))
}

// CrossSigningKeys reads rows of (user_id, key_type, key_json) by user and
// key type.
func CrossSigningKeys(ctx context.Context, c Conn, s *Stmt, args ...any) (map[string]map[string]json.RawMessage, error) {
	rows, err := c.Query(ctx, s, args...)
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]json.RawMessage{}
	for rows.Next() {
		var u, kt string
		var k []byte
		if err := rows.Scan(&u, &kt, &k); err != nil {
			return nil, fmt.Errorf("reading cross-signing keys: %w", err)
		}
		if out[u] == nil {
			out[u] = map[string]json.RawMessage{}
		}
		out[u][kt] = k
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	return out, nil
}

func (t DeviceTx) CrossSigningOf(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	return CrossSigningKeys(ctx, t.C, crossSigningOf, userIDs)
}

func (t DeviceTx) SharedWith(ctx context.Context, userID string) ([]string, error) {
	return t.strings(ctx, "listing users sharing a room", sharedWith, userID)
}

func (t DeviceTx) DeviceChanges(ctx context.Context, _ string, shared []string, from, to int64) ([]string, error) {
	return t.strings(ctx, "reading device changes", deviceChanges, from, to, shared)
}

func (t DeviceTx) RoomChanges(ctx context.Context, userID string, from, to int64) ([]devicelists.StreamEntry, error) {
	out, err := Collect(ctx, t.C, roomChanges, []any{from, to, userID}, func(r Rows) (e devicelists.StreamEntry, err error) {
		return e, r.Scan(&e.Kind, &e.UserID, &e.RoomID)
	})
	if err != nil {
		return nil, fmt.Errorf("reading membership changes: %w", err)
	}
	return out, nil
}

func (t DeviceTx) RoomMembers(ctx context.Context, roomIDs []string) ([]string, error) {
	return t.strings(ctx, "reading room members", roomMembers, roomIDs)
}

func (t DeviceTx) MarkRoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	return t.changed(ctx, "recording encryption", markRoomEncrypted, roomID)
}

func (t DeviceTx) RoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	var encrypted bool
	if err := t.C.QueryRow(ctx, roomEncrypted, roomID).Scan(&encrypted); err != nil {
		return false, fmt.Errorf("checking room encryption: %w", err)
	}
	return encrypted, nil
}

func (t DeviceTx) TrackRemote(ctx context.Context, roomID string, all bool, users []string) error {
	return t.exec(ctx, "tracking remote users", trackRemote, roomID, all, users)
}

func (t DeviceTx) UnsharedRemote(ctx context.Context, roomID string, all bool, users []string) ([]string, error) {
	return t.strings(ctx, "finding remote users no longer shared", unsharedRemote, roomID, all, users)
}

func (t DeviceTx) DropRemote(ctx context.Context, users []string) error {
	if len(users) == 0 {
		return nil
	}
	if err := t.C.ExecAll(ctx, dropRemote, users); err != nil {
		return fmt.Errorf("dropping remote device lists: %w", err)
	}
	return nil
}

func (t DeviceTx) RemoteUsersAfter(ctx context.Context, after string, limit int) ([]devicelists.TrackedUser, error) {
	return Collect(ctx, t.C, remoteUsersAfter, []any{after, limit}, func(r Rows) (u devicelists.TrackedUser, err error) {
		return u, r.Scan(&u.UserID, &u.Shared)
	})
}

func (t DeviceTx) RemoteState(ctx context.Context, userID string) (devicelists.RemoteState, bool, error) {
	var st devicelists.RemoteState
	err := t.C.QueryRow(ctx, remoteState, userID).Scan(&st.StreamID, &st.AppliedIDs, &st.Stale)
	if IsNoRows(err) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("reading remote device-list state: %w", err)
	}
	return st, true, nil
}

func (t DeviceTx) RemoteSeen(ctx context.Context, userID string) (int64, bool, error) {
	var seen int64
	err := t.C.QueryRow(ctx, remoteSeen, userID).Scan(&seen)
	if IsNoRows(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading remote device-list state: %w", err)
	}
	return seen, true, nil
}

func (t DeviceTx) TrackIfShared(ctx context.Context, userID string, seen int64) (bool, error) {
	return t.changed(ctx, "tracking remote user", trackIfShared, userID, seen)
}

func (t DeviceTx) MarkStale(ctx context.Context, userID string, seen int64) error {
	return t.exec(ctx, "marking remote device list stale", markStale, userID, seen)
}

func (t DeviceTx) UpsertRemoteDevice(ctx context.Context, d devicelists.DeviceKeys) error {
	return t.exec(ctx, "updating remote device", upsertRemoteDevice,
		d.UserID, d.DeviceID, []byte(d.Keys), nullIfEmpty(d.DisplayName))
}

func (t DeviceTx) DeleteRemoteDevice(ctx context.Context, userID, deviceID string) error {
	return t.exec(ctx, "updating remote device", deleteRemoteDevice, userID, deviceID)
}

func (t DeviceTx) SetRemoteApplied(ctx context.Context, userID string, streamID int64, applied []int64) error {
	return t.exec(ctx, "updating remote device-list state", setRemoteApplied, userID, streamID, applied)
}

func (t DeviceTx) RemoteDevices(ctx context.Context, userID string) ([]devicelists.DeviceKeys, error) {
	out, err := t.deviceKeysOf(ctx, remoteDevices, userID)
	if err != nil {
		return nil, fmt.Errorf("reading remote devices: %w", err)
	}
	return out, nil
}

func (t DeviceTx) FinishResync(ctx context.Context, userID string, streamID int64, stale bool) error {
	return t.exec(ctx, "updating remote device-list state", finishResync, userID, streamID, stale, []int64{})
}

func (t DeviceTx) FreshRemoteLists(ctx context.Context, userIDs []string) ([]devicelists.RemoteDeviceList, error) {
	return Collect(ctx, t.C, freshRemoteLists, []any{userIDs}, func(r Rows) (l devicelists.RemoteDeviceList, err error) {
		return l, r.Scan(&l.UserID, &l.StreamID)
	})
}

func (t DeviceTx) RemoteDevicesOf(ctx context.Context, userIDs []string) ([]devicelists.DeviceKeys, error) {
	return Collect(ctx, t.C, remoteDevicesOf, []any{userIDs}, func(r Rows) (d devicelists.DeviceKeys, err error) {
		var keys []byte
		err = r.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &keys)
		d.Keys = keys
		return d, err
	})
}

func (t DeviceTx) PruneOldest(ctx context.Context, cutoff time.Time, limit int) (int, int64, error) {
	rows, err := t.C.Query(ctx, pruneOldest, cutoff, limit)
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

func (t DeviceTx) RaisePrunedBelow(ctx context.Context, pos int64) error {
	_, err := t.C.Exec(ctx, raisePrunedBelow, pos)
	return err
}

// DeviceReads are the devicelists.Queries that only read, one statement
// each, on a pool's Conn. A backend embeds them in its DB and adds the
// rest.
type DeviceReads struct{ C Conn }

var (
	deviceByToken = New(`
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE token_hash = $1 AND deleted_at IS NULL`)
	deviceByID = New(`
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL`)
	userDevices = New(`
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE user_id = $1 AND deleted_at IS NULL ORDER BY device_id`)
	tombstones = New(`
		SELECT nid, user_id, device_id, display_name FROM devices
		WHERE deleted_at IS NOT NULL ORDER BY nid LIMIT $1`)
	sharedUsersOrdered = New(sharedUsers + ` ORDER BY 1`)
	crossSigning       = New(`SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE user_id {in $1}`)
	peekDeviceOutbox   = New(`
		SELECT pos, destination, edu_type, edu, enqueued_at FROM device_list_outbox
		WHERE destination = $1 ORDER BY pos LIMIT $2`)
	// deviceOutboxDestinations skips from destination to destination over
	// the primary key (a loose index scan): one probe per destination,
	// however many EDUs each has queued.
	deviceOutboxDestinations = New(`
		WITH RECURSIVE d(dest) AS (
			SELECT min(destination) FROM device_list_outbox
			UNION ALL
			SELECT (SELECT min(destination) FROM device_list_outbox WHERE destination > d.dest)
			FROM d WHERE d.dest IS NOT NULL
		)
		SELECT dest FROM d WHERE dest IS NOT NULL`)
	remoteUserCount = New(`SELECT count(*) FROM remote_device_lists`)
	// StreamState reads the device-list stream's head (never below the
	// pruning point, so positions are never reused: the head never goes
	// back once pruning has emptied the stream) and pruning point. The
	// inbox stores run it too, inside /sync's read.
	StreamState = New(`
		SELECT greatest(coalesce((SELECT max(pos) FROM device_list_stream), 0), device_list_pruned_below),
		       device_list_pruned_below
		FROM meta`)
)

func (q DeviceReads) StreamState(ctx context.Context) (devicelists.StreamState, error) {
	var st devicelists.StreamState
	if err := q.C.QueryRow(ctx, StreamState).Scan(&st.Head, &st.PrunedBelow); err != nil {
		return devicelists.StreamState{}, fmt.Errorf("reading the device-list stream state: %w", err)
	}
	return st, nil
}

func scanDevice(row Row) (devicelists.Device, error) {
	var d devicelists.Device
	var name *string
	err := row.Scan(&d.NID, &d.UserID, &d.DeviceID, &name)
	if IsNoRows(err) {
		return d, devicelists.ErrNotFound
	}
	if name != nil {
		d.DisplayName = *name
	}
	return d, err
}

func (q DeviceReads) DeviceByToken(ctx context.Context, tokenHash []byte) (devicelists.Device, error) {
	return scanDevice(q.C.QueryRow(ctx, deviceByToken, tokenHash))
}

func (q DeviceReads) Device(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	return scanDevice(q.C.QueryRow(ctx, deviceByID, userID, deviceID))
}

func (q DeviceReads) devices(ctx context.Context, s *Stmt, args ...any) ([]devicelists.Device, error) {
	out, err := Collect(ctx, q.C, s, args, func(r Rows) (devicelists.Device, error) { return scanDevice(r) })
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	return out, nil
}

func (q DeviceReads) UserDevices(ctx context.Context, userID string) ([]devicelists.Device, error) {
	return q.devices(ctx, userDevices, userID)
}

func (q DeviceReads) Tombstones(ctx context.Context, limit int) ([]devicelists.Device, error) {
	return q.devices(ctx, tombstones, limit)
}

func (q DeviceReads) SharedUsers(ctx context.Context, userID string) ([]string, error) {
	users, err := Strings(ctx, q.C, sharedUsersOrdered, userID)
	if err != nil {
		return nil, fmt.Errorf("listing users sharing a room: %w", err)
	}
	return users, nil
}

func (q DeviceReads) CrossSigning(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	return CrossSigningKeys(ctx, q.C, crossSigning, userIDs)
}

func (q DeviceReads) PeekOutbox(ctx context.Context, destination string, limit int) ([]devicelists.QueuedEDU, error) {
	out, err := Collect(ctx, q.C, peekDeviceOutbox, []any{destination, limit}, func(r Rows) (e devicelists.QueuedEDU, err error) {
		var edu []byte
		err = r.Scan(&e.Pos, &e.Destination, &e.Type, &edu, &e.EnqueuedAt)
		e.EDU = edu
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the device-list outbox: %w", err)
	}
	return out, nil
}

func (q DeviceReads) OutboxDestinations(ctx context.Context) ([]string, error) {
	dests, err := Strings(ctx, q.C, deviceOutboxDestinations)
	if err != nil {
		return nil, fmt.Errorf("listing device-list outbox destinations: %w", err)
	}
	return dests, nil
}

func (q DeviceReads) RemoteUserCount(ctx context.Context) (int, error) {
	var n int
	if err := q.C.QueryRow(ctx, remoteUserCount).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting remote device lists: %w", err)
	}
	return n, nil
}
