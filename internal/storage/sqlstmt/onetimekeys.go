package sqlstmt

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
)

// The statements of devicelists.KeyTx: one-time and fallback keys.
var (
	storedOneTimeKeys = New(`
		SELECT algorithm, key_id, key_json FROM one_time_keys
		WHERE device_nid = $1 AND algorithm || ':' || key_id {in $2}`)
	insertOneTimeKey = New(`
		INSERT INTO one_time_keys (user_id, device_nid, algorithm, key_id, key_json) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (device_nid, algorithm, key_id) DO NOTHING`)
	// putFallbackKey keeps the used flag of the same key uploaded again
	// (as Synapse does): only a new key is unused.
	putFallbackKey = New(`
		INSERT INTO fallback_keys (user_id, device_nid, algorithm, key_id, key_json, used) VALUES ($1, $2, $3, $4, $5, false)
		ON CONFLICT (device_nid, algorithm) DO UPDATE SET
			key_id = excluded.key_id, key_json = excluded.key_json, used = false
		WHERE fallback_keys.key_id <> excluded.key_id OR fallback_keys.key_json <> excluded.key_json`)
	// claimOneTimeKey deletes the one row it chose. On PostgreSQL the
	// choice skips rows a concurrent claimer (on any replica) has locked,
	// so two claimers never wait for, or return, the same key; SQLite's
	// writers take turns.
	claimOneTimeKey = Split(`
		DELETE FROM one_time_keys WHERE (device_nid, algorithm, key_id) IN (
			SELECT k.device_nid, k.algorithm, k.key_id FROM one_time_keys k
			JOIN devices d ON d.nid = k.device_nid
			WHERE d.user_id = $1 AND d.device_id = $2 AND d.deleted_at IS NULL AND k.algorithm = $3
			ORDER BY k.key_id LIMIT 1
			FOR UPDATE OF k SKIP LOCKED)
		RETURNING device_nid, key_id, key_json`, `
		DELETE FROM one_time_keys WHERE (device_nid, algorithm, key_id) IN (
			SELECT k.device_nid, k.algorithm, k.key_id FROM one_time_keys k
			JOIN devices d ON d.nid = k.device_nid
			WHERE d.user_id = $1 AND d.device_id = $2 AND d.deleted_at IS NULL AND k.algorithm = $3
			ORDER BY k.key_id LIMIT 1)
		RETURNING device_nid, key_id, key_json`)
	claimFallbackKey = New(`
		UPDATE fallback_keys SET used = true
		WHERE device_nid = (SELECT nid FROM devices WHERE user_id = $1 AND device_id = $2 AND deleted_at IS NULL)
		  AND algorithm = $3
		RETURNING device_nid, key_id, key_json`)
	countOneTimeKeys = New(`
		SELECT algorithm, count(*) FROM one_time_keys WHERE device_nid = $1 GROUP BY algorithm`)
	unusedFallbackKeys = New(`
		SELECT algorithm FROM fallback_keys WHERE device_nid = $1 AND NOT used ORDER BY algorithm`)
	// KeyCounts reads both counts of a device in one statement, for
	// /sync: (algorithm, one-time keys left, 0) rows, then (algorithm, 0,
	// 1) for each unused fallback key (ReadKeyCounts reads them). The inbox
	// stores run it inside a /sync check's own round trip; DeviceReads
	// alone for a sync that reads no inbox.
	KeyCounts = New(`
		SELECT algorithm, count(*), 0 FROM one_time_keys WHERE device_nid = $1 GROUP BY algorithm
		UNION ALL
		SELECT algorithm, 0, 1 FROM fallback_keys WHERE device_nid = $1 AND NOT used`)
	deleteOneTimeKeys  = New(`DELETE FROM one_time_keys WHERE device_nid = $1`)
	deleteFallbackKeys = New(`DELETE FROM fallback_keys WHERE device_nid = $1`)
)

func (t DeviceTx) StoredOneTimeKeys(ctx context.Context, nid int64, ids []string) (map[string]json.RawMessage, error) {
	rows, err := t.C.Query(ctx, storedOneTimeKeys, nid, ids)
	if err != nil {
		return nil, fmt.Errorf("reading one-time keys: %w", err)
	}
	defer rows.Close()
	out := map[string]json.RawMessage{}
	for rows.Next() {
		var alg, id string
		var key []byte
		if err := rows.Scan(&alg, &id, &key); err != nil {
			return nil, fmt.Errorf("reading one-time keys: %w", err)
		}
		out[alg+":"+id] = key
	}
	return out, rows.Err()
}

func (t DeviceTx) InsertOneTimeKey(ctx context.Context, userID string, nid int64, k devicelists.OneTimeKey) (bool, error) {
	return t.changed(ctx, "storing a one-time key", insertOneTimeKey, userID, nid, k.Algorithm, k.KeyID, []byte(k.Key))
}

func (t DeviceTx) PutFallbackKey(ctx context.Context, userID string, nid int64, k devicelists.OneTimeKey) (bool, error) {
	return t.changed(ctx, "storing a fallback key", putFallbackKey, userID, nid, k.Algorithm, k.KeyID, []byte(k.Key))
}

// claimed reads the row a claim statement returned.
func (t DeviceTx) claimed(ctx context.Context, s *Stmt, c devicelists.KeyClaim) (int64, devicelists.OneTimeKey, bool, error) {
	k := devicelists.OneTimeKey{Algorithm: c.Algorithm}
	var nid int64
	var key []byte
	err := t.C.QueryRow(ctx, s, c.UserID, c.DeviceID, c.Algorithm).Scan(&nid, &k.KeyID, &key)
	if IsNoRows(err) {
		return 0, devicelists.OneTimeKey{}, false, nil
	}
	if err != nil {
		return 0, devicelists.OneTimeKey{}, false, err
	}
	k.Key = key
	return nid, k, true, nil
}

func (t DeviceTx) ClaimOneTimeKey(ctx context.Context, c devicelists.KeyClaim) (int64, devicelists.OneTimeKey, bool, error) {
	return t.claimed(ctx, claimOneTimeKey, c)
}

func (t DeviceTx) ClaimFallbackKey(ctx context.Context, c devicelists.KeyClaim) (int64, devicelists.OneTimeKey, bool, error) {
	return t.claimed(ctx, claimFallbackKey, c)
}

func (t DeviceTx) CountOneTimeKeys(ctx context.Context, nid int64) (map[string]int, error) {
	rows, err := t.C.Query(ctx, countOneTimeKeys, nid)
	if err != nil {
		return nil, fmt.Errorf("counting one-time keys: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var alg string
		var n int64
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, fmt.Errorf("counting one-time keys: %w", err)
		}
		out[alg] = int(n)
	}
	return out, rows.Err()
}

func (t DeviceTx) UnusedFallbackKeys(ctx context.Context, nid int64) ([]string, error) {
	return t.strings(ctx, "reading fallback keys", unusedFallbackKeys, nid)
}

func (t DeviceTx) DeleteDeviceKeys(ctx context.Context, nid int64) error {
	if err := t.exec(ctx, "deleting one-time keys", deleteOneTimeKeys, nid); err != nil {
		return err
	}
	return t.exec(ctx, "deleting fallback keys", deleteFallbackKeys, nid)
}

// KeyCounts is one statement outside a transaction, for a sync that reads
// no inbox (a sliding-sync connection without the to_device extension);
// every other /sync reads the counts in its inbox check's round trip.
func (r DeviceReads) KeyCounts(ctx context.Context, nid int64) (devicelists.KeyCounts, error) {
	rows, err := r.C.Query(ctx, KeyCounts, nid)
	if err != nil {
		return devicelists.KeyCounts{}, fmt.Errorf("counting one-time keys: %w", err)
	}
	c, err := ReadKeyCounts(rows)
	return devicelists.KeyCounts(c), err
}

// ReadKeyCounts reads and closes the rows of KeyCounts: never a nil map or
// list, the fallback key types sorted.
func ReadKeyCounts(rows Rows) (inbox.OneTimeKeyCounts, error) {
	defer rows.Close()
	out := inbox.OneTimeKeyCounts{OneTimeKeys: map[string]int{}, UnusedFallback: []string{}}
	for rows.Next() {
		var alg string
		var n, fallback int64
		if err := rows.Scan(&alg, &n, &fallback); err != nil {
			return out, fmt.Errorf("counting one-time keys: %w", err)
		}
		if fallback == 1 {
			out.UnusedFallback = append(out.UnusedFallback, alg)
		} else {
			out.OneTimeKeys[alg] = int(n)
		}
	}
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("counting one-time keys: %w", err)
	}
	slices.Sort(out.UnusedFallback)
	return out, nil
}
