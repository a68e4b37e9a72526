package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// maxRowsPerStatement bounds the rows of one multi-row VALUES statement, so
// a fan-out of any size stays far below SQLite's limit of 32766 bound
// parameters while still writing hundreds of rows per statement.
const maxRowsPerStatement = 500

// inboxStore is the inbox's accept path and sync, written for SQLite; the
// upkeep use cases are inbox.Upkeep's, on inboxQueries.
type inboxStore struct {
	inbox.Upkeep
	db    *DB
	hooks inbox.Hooks
}

func (s *inboxStore) Epoch() string { return s.db.epoch }

// Accept stores a sendToDevice in one write transaction. Writers run one at
// a time, which gives what PostgreSQL gets from row locks: a retry of the
// same transaction id waits for the first to commit and then finds its
// record, the recipients cannot be deleted half-way, and the positions
// commit in order.
//
//  1. insert the transaction record; if it exists, answer its response;
//  2. resolve the live recipient devices and expand "*";
//  3. insert the inbox rows and outbox EDUs, many rows per statement.
func (s *inboxStore) Accept(ctx context.Context, a *inbox.Accept) (inbox.AcceptResult, error) {
	var res inbox.AcceptResult
	var keys []wakeup.Key
	err := s.db.writeSend(ctx, func(tx *sql.Tx) error {
		if a.Guard != nil {
			// With the writer's turn held: nothing can revoke the token
			// between this read and the commit.
			if _, err := checkDevice(ctx, tx, inbox.SyncQuery{
				Device: inbox.Recipient{NID: a.Guard.NID}, TokenHash: a.Guard.TokenHash,
			}); err != nil {
				return err
			}
		}
		// Read the clock with the writer's turn held, so acceptance times
		// follow positions (expiry walks by position).
		now := micros(time.Now())
		r, err := tx.ExecContext(ctx, `
			INSERT INTO send_txns (user_id, device_id, event_type, txn_id, response, created_at)
			VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT DO NOTHING`,
			a.Txn.UserID, a.Txn.DeviceID, a.Txn.EventType, a.Txn.TxnID, a.Response, now)
		if err != nil {
			return fmt.Errorf("recording transaction: %w", err)
		}
		if n, err := r.RowsAffected(); err != nil {
			return fmt.Errorf("recording transaction: %w", err)
		} else if n == 0 {
			res.Duplicate = true
			err := tx.QueryRowContext(ctx, `
				SELECT response FROM send_txns
				WHERE user_id = ? AND device_id = ? AND event_type = ? AND txn_id = ?`,
				a.Txn.UserID, a.Txn.DeviceID, a.Txn.EventType, a.Txn.TxnID).Scan(&res.Response)
			if err != nil {
				return fmt.Errorf("reading recorded response: %w", err)
			}
			return nil
		}
		res.Response = a.Response

		if len(a.Local) > 0 {
			rows, unknown, err := resolveRecipients(ctx, tx, a.Local)
			if err != nil {
				return err
			}
			res.Unknown = unknown
			if a.Stale {
				var plan inbox.StalePlan
				if rows, plan, err = applyStale(ctx, tx, rows, a.Sender, a.EventType); err != nil {
					return err
				}
				res.Dropped = plan.Drops(0, len(plan.Skip))
			}
			if err := insertInboxRows(ctx, tx, rows, a.Sender, a.EventType, now); err != nil {
				return err
			}
			res.Delivered = len(rows)
			for _, r := range rows {
				keys = append(keys, wakeup.DeviceKey(r.nid))
			}
		}
		if len(a.Remote) > 0 {
			for i, e := range a.Remote {
				if i > 0 && a.Remote[i-1].Destination == e.Destination {
					continue
				}
				if _, err := tx.ExecContext(ctx, `
					INSERT INTO todevice_outbox_destinations (destination, last_enqueued_at)
					VALUES (?, ?)
					ON CONFLICT (destination) DO UPDATE SET last_enqueued_at = excluded.last_enqueued_at`,
					e.Destination, now); err != nil {
					return fmt.Errorf("recording outbox destination: %w", err)
				}
				keys = append(keys, wakeup.OutboxKey(e.Destination))
			}
			if err := insertOutboxRows(ctx, tx, a.Remote, now); err != nil {
				return err
			}
			res.Queued = len(a.Remote)
		}
		if s.hooks.BeforeAcceptCommit != nil {
			return s.hooks.BeforeAcceptCommit(ctx, a)
		}
		return nil
	})
	if err != nil {
		return inbox.AcceptResult{}, err
	}
	s.db.wake(keys)
	return res, nil
}

// inboxRow is one inbox row to write.
type inboxRow struct {
	user    string
	nid     int64
	content []byte
}

// resolveRecipients resolves local messages to live devices, expanding "*",
// and returns the inbox rows to write (in message order, a "*" expanded in
// nid order, as the PostgreSQL backend writes them) and how many messages
// found no device.
func resolveRecipients(ctx context.Context, tx *sql.Tx, msgs []inbox.LocalMessage) ([]inboxRow, int, error) {
	type key struct{ user, device string }
	var exact []key
	var starUsers []string
	for _, m := range msgs {
		if m.DeviceID == inbox.AllDevices {
			starUsers = append(starUsers, m.UserID)
		} else {
			exact = append(exact, key{m.UserID, m.DeviceID})
		}
	}
	type device struct {
		nid int64
		key
	}
	var devices []device
	scan := func(q string, args []any) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("resolving recipient devices: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var d device
			if err := rows.Scan(&d.nid, &d.user, &d.device); err != nil {
				return fmt.Errorf("resolving recipient devices: %w", err)
			}
			devices = append(devices, d)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("resolving recipient devices: %w", err)
		}
		return nil
	}
	for chunk := range slices.Chunk(exact, maxRowsPerStatement) {
		args := make([]any, 0, 2*len(chunk))
		for _, k := range chunk {
			args = append(args, k.user, k.device)
		}
		// The VALUES list drives the join: one index probe per requested
		// device.
		if err := scan(`
			SELECT d.nid, d.user_id, d.device_id
			FROM (VALUES `+placeholders(len(chunk), 2)+`) AS r
			JOIN devices d ON d.user_id = r.column1 AND d.device_id = r.column2
			WHERE d.deleted_at IS NULL`, args); err != nil {
			return nil, 0, err
		}
	}
	for chunk := range slices.Chunk(starUsers, maxRowsPerStatement) {
		args := make([]any, len(chunk))
		for i, u := range chunk {
			args[i] = u
		}
		if err := scan(`
			SELECT nid, user_id, device_id FROM devices
			WHERE deleted_at IS NULL AND user_id IN `+placeholders(1, len(chunk)), args); err != nil {
			return nil, 0, err
		}
	}
	slices.SortFunc(devices, func(a, b device) int { return cmp.Compare(a.nid, b.nid) })

	recipients := inbox.NewRecipients(len(devices))
	for _, d := range devices {
		recipients.Add(d.nid, d.user, d.device)
	}
	var out []inboxRow
	unknown := recipients.Expand(msgs, func(user string, nid int64, content json.RawMessage) {
		out = append(out, inboxRow{user, nid, content})
	})
	return out, unknown, nil
}

// insertInboxRows writes the rows with multi-row INSERTs. Every parameter
// is a plain "?": the driver looks each numbered one (?NNN) up by name, and
// SQLite's name lookup is a linear scan, which made binding a 500-row
// statement quadratic.
func insertInboxRows(ctx context.Context, tx *sql.Tx, rows []inboxRow, sender, eventType string, now int64) error {
	for chunk := range slices.Chunk(rows, maxRowsPerStatement) {
		args := make([]any, 0, 6*len(chunk))
		for _, r := range chunk {
			args = append(args, r.user, r.nid, sender, eventType, r.content, now)
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO device_inbox (user_id, device_nid, sender, type, content, enqueued_at)
			VALUES `+placeholders(len(chunk), 6), args...); err != nil {
			return fmt.Errorf("inserting inbox rows: %w", err)
		}
	}
	return nil
}

// insertOutboxRows writes the EDUs in order, so their positions follow the
// order Accept built them in.
func insertOutboxRows(ctx context.Context, tx *sql.Tx, edus []inbox.OutboundEDU, now int64) error {
	for chunk := range slices.Chunk(edus, maxRowsPerStatement) {
		args := make([]any, 0, 4*len(chunk))
		for _, e := range chunk {
			args = append(args, e.Destination, e.MessageID, []byte(e.EDU), now)
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO todevice_outbox (destination, message_id, edu, enqueued_at)
			VALUES `+placeholders(len(chunk), 4), args...); err != nil {
			return fmt.Errorf("inserting outbox rows: %w", err)
		}
	}
	return nil
}

// placeholders returns rows groups of cols "?": "(?,?),(?,?)".
func placeholders(rows, cols int) string {
	group := "(" + strings.Repeat("?,", cols-1) + "?)"
	return strings.Repeat(group+",", rows-1) + group
}

// Sync acknowledges, then reads. The acknowledgement is a write and takes
// the writer's turn; the read runs on a reader, so a sync that only reads
// (every check of a long-poll after the first) never waits for writers.
// The acknowledgement deletes only (AckLo, AckHi]: everything at or below
// AckLo was deleted before that position was handed out, so the delete
// never walks the entries of earlier acknowledgements, and the fetch starts
// right above AckHi for the same reason.
//
// With a TokenHash, the write checks the token before it deletes anything
// and the read checks it again in its snapshot: when either finds that the
// token no longer names the device, Sync returns inbox.ErrTokenRevoked and
// nothing read.
func (s *inboxStore) Sync(ctx context.Context, q inbox.SyncQuery) (inbox.SyncResult, error) {
	var res inbox.SyncResult
	if q.AckHi > q.AckLo {
		err := s.db.write(ctx, func(tx *sql.Tx) error {
			if _, err := checkDevice(ctx, tx, q); err != nil {
				return err
			}
			if err := checkIssued(ctx, tx, q.AckHi); err != nil {
				return err
			}
			r, err := tx.ExecContext(ctx, `
				DELETE FROM device_inbox
				WHERE user_id = ? AND device_nid = ? AND pos > ? AND pos <= ?`,
				q.Device.UserID, q.Device.NID, q.AckLo, q.AckHi)
			if err != nil {
				return err
			}
			n, err := r.RowsAffected()
			res.Acked = int(n)
			return err
		})
		if err != nil {
			return inbox.SyncResult{}, fmt.Errorf("acknowledging messages: %w", err)
		}
	}
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		live, err := checkDevice(ctx, tx, q)
		if err != nil {
			return err
		}
		if q.AckHi > 0 && q.AckHi <= q.AckLo {
			if err := checkIssued(ctx, tx, q.AckHi); err != nil {
				return err
			}
		}
		if !live {
			return inbox.ErrDeviceGone
		}
		if q.DeviceListHead {
			var pruned int64
			if err := tx.QueryRowContext(ctx, streamStateSQL).Scan(&res.DeviceListHead, &pruned); err != nil {
				return fmt.Errorf("reading the device-list head: %w", err)
			}
		}
		if err := fetchMessages(ctx, tx, q, &res); err != nil {
			return err
		}
		if q.KeyCounts {
			rows, err := sqlstmt.SQLiteConn{R: tx}.Query(ctx, sqlstmt.KeyCounts, q.Device.NID)
			if err != nil {
				return fmt.Errorf("counting one-time keys: %w", err)
			}
			if res.KeyCounts, err = sqlstmt.ReadKeyCounts(rows); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return inbox.SyncResult{}, err
	}
	if len(res.Messages) > q.Limit {
		res.Messages, res.More = res.Messages[:q.Limit], true
	}
	return res, nil
}

// checkDevice reads whether the device is alive, and for a guarded sync
// (inbox.SyncQuery.TokenHash) refuses with inbox.ErrTokenRevoked unless the
// token still names it: a primary-key lookup of the device row. (IS compares
// as = does, and is false rather than NULL for an unguarded sync, whose
// answer is not used.)
func checkDevice(ctx context.Context, tx *sql.Tx, q inbox.SyncQuery) (live bool, err error) {
	var token bool
	err = tx.QueryRowContext(ctx, `
		SELECT deleted_at IS NULL, deleted_at IS NULL AND token_hash IS ? FROM devices WHERE nid = ?`,
		q.TokenHash, q.Device.NID).Scan(&live, &token)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("checking device: %w", err)
	}
	if q.TokenHash != nil && !token {
		return false, inbox.ErrTokenRevoked
	}
	return live, nil
}

// fetchMessages reads the device's pending messages above AckHi, one more
// than the limit (to tell whether more are pending).
func fetchMessages(ctx context.Context, tx *sql.Tx, q inbox.SyncQuery, res *inbox.SyncResult) error {
	rows, err := tx.QueryContext(ctx, `
		SELECT pos, sender, type, content, enqueued_at FROM device_inbox
		WHERE user_id = ? AND device_nid = ? AND pos > ?
		ORDER BY pos LIMIT ?`,
		q.Device.UserID, q.Device.NID, q.AckHi, q.Limit+1)
	if err != nil {
		return fmt.Errorf("fetching messages: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var m inbox.Message
		var content []byte
		var at int64
		if err := rows.Scan(&m.Pos, &m.Sender, &m.Type, &content, &at); err != nil {
			return fmt.Errorf("fetching messages: %w", err)
		}
		m.Content, m.EnqueuedAt = content, fromMicros(at)
		res.Messages = append(res.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("fetching messages: %w", err)
	}
	return nil
}

// checkIssued refuses a since position above every inbox position ever
// issued: AUTOINCREMENT records the highest in sqlite_sequence, which never
// goes back, not when rows are deleted.
func checkIssued(ctx context.Context, tx *sql.Tx, pos int64) error {
	var issued int64
	if err := tx.QueryRowContext(ctx,
		`SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'device_inbox'), 0)`).Scan(&issued); err != nil {
		return fmt.Errorf("checking the since position: %w", err)
	}
	if pos > issued {
		return inbox.ErrNotIssued
	}
	return nil
}

// AcceptRemote stores the to-device EDUs of an inbound transaction in one
// write transaction, EDU after EDU: the deduplication record first (a
// duplicate, stored before or earlier in the batch, stores nothing more),
// then the recipients resolved exactly as Accept does and the inbox rows.
func (s *inboxStore) AcceptRemote(ctx context.Context, batch []*inbox.RemoteAccept) ([]inbox.AcceptResult, error) {
	results := make([]inbox.AcceptResult, len(batch))
	var keys []wakeup.Key
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		clear(results)
		keys = nil
		now := micros(time.Now())
		for i, r := range batch {
			ins, err := tx.ExecContext(ctx, `
				INSERT INTO todevice_inbound_dedupe (origin, message_id, received_at) VALUES (?, ?, ?)
				ON CONFLICT DO NOTHING`, r.Origin, r.MessageID, now)
			if err != nil {
				return fmt.Errorf("recording message id: %w", err)
			}
			if n, err := ins.RowsAffected(); err != nil {
				return fmt.Errorf("recording message id: %w", err)
			} else if n == 0 {
				results[i].Duplicate = true
				continue
			}
			if len(r.Local) == 0 {
				continue
			}
			rows, unknown, err := resolveRecipients(ctx, tx, r.Local)
			if err != nil {
				return err
			}
			results[i].Unknown = unknown
			if r.Stale {
				var plan inbox.StalePlan
				if rows, plan, err = applyStale(ctx, tx, rows, r.Sender, r.EventType); err != nil {
					return err
				}
				results[i].Dropped = plan.Drops(0, len(plan.Skip))
			}
			if err := insertInboxRows(ctx, tx, rows, r.Sender, r.EventType, now); err != nil {
				return err
			}
			results[i].Delivered = len(rows)
			for _, row := range rows {
				keys = append(keys, wakeup.DeviceKey(row.nid))
			}
		}
		if s.hooks.BeforeAcceptRemoteCommit != nil {
			return s.hooks.BeforeAcceptRemoteCommit(ctx, batch)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.db.wake(keys)
	return results, nil
}

// deleteRowsAt is the one statement that removes sent EDUs from an outbox
// table (todevice_outbox, device_list_outbox): exactly the listed positions
// of one destination, never a range, a statement per maxRowsPerStatement
// positions.
func deleteRowsAt(ctx context.Context, tx *sql.Tx, table, destination string, positions []int64) (int, error) {
	total := 0
	for chunk := range slices.Chunk(positions, maxRowsPerStatement) {
		args := make([]any, 0, len(chunk)+1)
		args = append(args, destination)
		for _, p := range chunk {
			args = append(args, p)
		}
		r, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE destination = ? AND pos IN `+placeholders(1, len(chunk)), args...)
		if err != nil {
			return 0, fmt.Errorf("deleting outbox rows: %w", err)
		}
		n, err := r.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("deleting outbox rows: %w", err)
		}
		total += int(n)
	}
	return total, nil
}

// expireOutboxRows deletes up to limit rows enqueued before cutoff from an
// outbox table (todevice_outbox or device_list_outbox, whose stored
// federation transactions name them as source), oldest first, and counts
// them by destination.
func (db *DB) expireOutboxRows(ctx context.Context, table, source string, cutoff time.Time, limit int) ([]inbox.DestinationCount, error) {
	var out []inbox.DestinationCount
	err := db.write(ctx, func(tx *sql.Tx) error {
		dests, err := expireOutboxDestinations(ctx, tx, table, source, cutoff, limit)
		out = inbox.CountByDestination(dests)
		return err
	})
	return out, err
}

// expireOutboxDestinations is expireOutboxRows's statement: it walks the
// enqueued_at index over the expired rows only, skipping the rows of stored
// federation transactions, and returns the destination of each row.
func expireOutboxDestinations(ctx context.Context, tx *sql.Tx, table, source string, cutoff time.Time, limit int) ([]string, error) {
	return queryStrings(ctx, tx, `
		DELETE FROM `+table+` WHERE pos IN (
			SELECT o.pos FROM `+table+` o
			WHERE o.enqueued_at < ?
			  AND NOT EXISTS (
				SELECT 1 FROM federation_txn_items i
				WHERE i.destination = o.destination AND i.source = ? AND i.pos = o.pos)
			ORDER BY o.enqueued_at LIMIT ?)
		RETURNING destination`, micros(cutoff), source, limit)
}
