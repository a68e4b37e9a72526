package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// readTx runs fn in a read-only snapshot: all its statements see the same
// commits.
func (db *DB) readTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
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

// ---------------------------------------------------------------------------
// The remote cache.
// ---------------------------------------------------------------------------

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
