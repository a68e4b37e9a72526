package sqlite

import (
	"context"
	"database/sql"
	"time"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
)

// inboxDB runs the inbox upkeep's statements: writes in one write
// transaction on the writer, reads in a read transaction.
type inboxDB struct{ db *DB }

func (d inboxDB) Each(ctx context.Context, fn func(context.Context, inbox.Queries) error) error {
	return d.db.write(ctx, func(tx *sql.Tx) error { return fn(ctx, newInboxQueries(tx)) })
}

func (d inboxDB) Read(ctx context.Context, fn func(context.Context, inbox.Queries) error) error {
	return d.db.read(ctx, func(tx *sql.Tx) error { return fn(ctx, newInboxQueries(tx)) })
}

// inboxQueries implements inbox.Queries.
type inboxQueries struct {
	sqlstmt.InboxQueries
	tx *sql.Tx
}

func newInboxQueries(tx *sql.Tx) inboxQueries {
	return inboxQueries{InboxQueries: sqlstmt.InboxQueries{C: sqlstmt.SQLiteConn{R: tx}}, tx: tx}
}

// queueTables are the tables of the inbox's queues.
var queueTables = [...]string{inbox.DeviceInbox: "device_inbox", inbox.ToDeviceOutbox: "todevice_outbox"}

func (q inboxQueries) PurgeDeviceRows(ctx context.Context, d inbox.Recipient, after int64, limit int) ([]int64, error) {
	rows, err := q.tx.QueryContext(ctx, `
		DELETE FROM device_inbox WHERE pos IN (
			SELECT pos FROM device_inbox
			WHERE user_id = ? AND device_nid = ? AND pos > ?
			ORDER BY pos LIMIT ?)
		RETURNING pos`, d.UserID, d.NID, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var pos int64
		if err := rows.Scan(&pos); err != nil {
			return nil, err
		}
		out = append(out, pos)
	}
	return out, rows.Err()
}

func (q inboxQueries) deleted(r sql.Result, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	n, err := r.RowsAffected()
	return int(n), err
}

func (q inboxQueries) PruneTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return q.deleted(q.tx.ExecContext(ctx, `
		DELETE FROM send_txns WHERE rowid IN (
			SELECT rowid FROM send_txns WHERE created_at < ? LIMIT ?)`, micros(cutoff), limit))
}

// ExpireMessages looks only at the oldest limit rows by position (positions
// follow acceptance time), so it costs the same whether or not anything has
// expired.
func (q inboxQueries) ExpireMessages(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return q.deleted(q.tx.ExecContext(ctx, `
		DELETE FROM device_inbox WHERE pos IN (
			SELECT pos FROM (SELECT pos, enqueued_at FROM device_inbox ORDER BY pos LIMIT ?)
			WHERE enqueued_at < ?)`, limit, micros(cutoff)))
}

func (q inboxQueries) PruneInboundDedupe(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return q.deleted(q.tx.ExecContext(ctx, `
		DELETE FROM todevice_inbound_dedupe WHERE rowid IN (
			SELECT rowid FROM todevice_inbound_dedupe WHERE received_at < ? LIMIT ?)`, micros(cutoff), limit))
}

// EstimateRows has no estimate: SQLite keeps no row-count statistics, so
// backlogs count exactly, walking the smallest index on a reader and
// blocking no writer (about 13 ms per million pending messages, every 15 s).
func (q inboxQueries) EstimateRows(context.Context, inbox.Queue) (int64, bool, error) {
	return 0, false, nil
}

func (q inboxQueries) CountRows(ctx context.Context, queue inbox.Queue, upTo int64) (int64, error) {
	query := `SELECT count(*) FROM ` + queueTables[queue]
	if upTo > 0 {
		query = `SELECT count(*) FROM (SELECT 1 FROM ` + queueTables[queue] + ` LIMIT ?)`
	}
	var n int64
	err := q.tx.QueryRowContext(ctx, query, upToArgs(upTo)...).Scan(&n)
	return n, err
}

func upToArgs(upTo int64) []any {
	if upTo > 0 {
		return []any{upTo}
	}
	return nil
}

// Oldest of the inbox is the row of the lowest position (positions follow
// acceptance time).
func (q inboxQueries) Oldest(ctx context.Context, queue inbox.Queue) (time.Time, error) {
	query := `SELECT min(enqueued_at) FROM todevice_outbox`
	if queue == inbox.DeviceInbox {
		query = `SELECT (SELECT enqueued_at FROM device_inbox ORDER BY pos LIMIT 1)`
	}
	var oldest sql.NullInt64
	if err := q.tx.QueryRowContext(ctx, query).Scan(&oldest); err != nil || !oldest.Valid {
		return time.Time{}, err
	}
	return fromMicros(oldest.Int64), nil
}

func (q inboxQueries) DeleteOutbox(ctx context.Context, destination string, positions []int64) (int, error) {
	return deleteRowsAt(ctx, q.tx, "todevice_outbox", destination, positions)
}

func (q inboxQueries) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]string, error) {
	return expireOutboxDestinations(ctx, q.tx, "todevice_outbox", inbox.OutboxSource, cutoff, limit)
}
