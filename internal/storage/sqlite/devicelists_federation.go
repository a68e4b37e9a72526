package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
)

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

// ---------------------------------------------------------------------------
// The remote cache.
// ---------------------------------------------------------------------------

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
