package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
)

// inboxDB runs the inbox upkeep's statements, each on the pool.
type inboxDB struct{ db *DB }

func (d inboxDB) Each(ctx context.Context, fn func(context.Context, inbox.Queries) error) error {
	return fn(ctx, newInboxQueries(d.db.pool))
}

func (d inboxDB) Read(ctx context.Context, fn func(context.Context, inbox.Queries) error) error {
	return fn(ctx, newInboxQueries(d.db.pool))
}

// inboxQueries implements inbox.Queries.
type inboxQueries struct {
	sqlstmt.InboxQueries
	c conn
}

func newInboxQueries(c conn) inboxQueries {
	return inboxQueries{InboxQueries: sqlstmt.InboxQueries{C: sqlstmt.PgxConn{R: c}}, c: c}
}

// queueTables are the tables of the inbox's queues.
var queueTables = [...]string{inbox.DeviceInbox: "device_inbox", inbox.ToDeviceOutbox: "todevice_outbox"}

func (q inboxQueries) PurgeDeviceRows(ctx context.Context, d inbox.Recipient, after int64, limit int) ([]int64, error) {
	rows, err := q.c.Query(ctx, `
		WITH batch AS (
			SELECT pos FROM device_inbox
			WHERE user_id = $1 AND device_nid = $2 AND pos > $3
			ORDER BY pos LIMIT $4
		)
		DELETE FROM device_inbox d USING batch
		WHERE d.user_id = $1 AND d.device_nid = $2 AND d.pos = batch.pos
		RETURNING d.pos`, d.UserID, d.NID, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

func (q inboxQueries) PruneTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	tag, err := q.c.Exec(ctx, `
		DELETE FROM send_txns WHERE ctid = ANY (ARRAY (
			SELECT ctid FROM send_txns WHERE created_at < $1 LIMIT $2))`, cutoff, limit)
	return int(tag.RowsAffected()), err
}

// ExpireMessages walks the acceptance-time index from the oldest row and
// stops at the cutoff or the limit, so it costs nothing when nothing expired.
func (q inboxQueries) ExpireMessages(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	tag, err := q.c.Exec(ctx, `
		DELETE FROM device_inbox WHERE ctid = ANY (ARRAY (
			SELECT ctid FROM device_inbox WHERE enqueued_at < $1 ORDER BY enqueued_at LIMIT $2))`, cutoff, limit)
	return int(tag.RowsAffected()), err
}

func (q inboxQueries) PruneInboundDedupe(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	tag, err := q.c.Exec(ctx, `
		DELETE FROM todevice_inbound_dedupe WHERE ctid = ANY (ARRAY (
			SELECT ctid FROM todevice_inbound_dedupe WHERE received_at < $1 LIMIT $2))`, cutoff, limit)
	return int(tag.RowsAffected()), err
}

// EstimateRows reads the statistics' live-tuple estimate.
func (q inboxQueries) EstimateRows(ctx context.Context, queue inbox.Queue) (int64, bool, error) {
	var n int64
	err := q.c.QueryRow(ctx, `
		SELECT coalesce((SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = $1::regclass), 0)`,
		queueTables[queue]).Scan(&n)
	return n, true, err
}

func (q inboxQueries) CountRows(ctx context.Context, queue inbox.Queue, upTo int64) (int64, error) {
	var n int64
	err := q.c.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM `+queueTables[queue]+` LIMIT $1) t`, upTo).Scan(&n)
	return n, err
}

func (q inboxQueries) Oldest(ctx context.Context, queue inbox.Queue) (time.Time, error) {
	var oldest *time.Time
	err := q.c.QueryRow(ctx, `SELECT min(enqueued_at) FROM `+queueTables[queue]).Scan(&oldest)
	if err != nil || oldest == nil {
		return time.Time{}, err
	}
	return *oldest, nil
}

func (q inboxQueries) DeleteOutbox(ctx context.Context, destination string, positions []int64) (int, error) {
	return deleteOutboxRows(ctx, q.c, destination, positions)
}

func (q inboxQueries) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]string, error) {
	return expireOutboxDestinations(ctx, q.c, "todevice_outbox", inbox.OutboxSource, cutoff, limit)
}

// exactCountBelow is the table size up to which a backlog counts rows
// exactly (the device-list outbox's too); above it the statistics'
// live-tuple estimate is used, so a scrape never scans a large table.
const exactCountBelow = 100_000
