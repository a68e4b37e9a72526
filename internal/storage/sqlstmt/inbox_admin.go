package sqlstmt

import (
	"context"
	"time"

	"github.com/todeviced/todeviced/internal/inbox"
)

// The admin API's statements of the inbox (inbox.Queries), both dialects.
var (
	inboxSummary = New(`
		SELECT count(*), min(enqueued_at) FROM device_inbox
		WHERE user_id = $1 AND device_nid = $2`)
	inboxCountsByType = New(`
		SELECT type, count(*) AS n FROM device_inbox
		WHERE user_id = $1 AND device_nid = $2
		GROUP BY type ORDER BY n DESC, type LIMIT $3`)
	inboxCountsBySender = New(`
		SELECT sender, count(*) AS n FROM device_inbox
		WHERE user_id = $1 AND device_nid = $2
		GROUP BY sender ORDER BY n DESC, sender LIMIT $3`)
	userInboxes = New(`
		SELECT d.user_id, d.device_id, d.nid,
			(SELECT count(*) FROM device_inbox i WHERE i.user_id = d.user_id AND i.device_nid = d.nid),
			(SELECT min(enqueued_at) FROM device_inbox i WHERE i.user_id = d.user_id AND i.device_nid = d.nid)
		FROM devices d WHERE d.user_id = $1 AND d.deleted_at IS NULL
		ORDER BY d.device_id`)
	largestInboxes = New(`
		SELECT i.user_id, coalesce(d.device_id, ''), i.device_nid, i.n, i.oldest
		FROM (SELECT user_id, device_nid, count(*) AS n, min(enqueued_at) AS oldest
			FROM device_inbox GROUP BY user_id, device_nid
			ORDER BY n DESC, user_id, device_nid LIMIT $1) i
		LEFT JOIN devices d ON d.nid = i.device_nid
		ORDER BY i.n DESC, i.user_id, i.device_nid`)
	// purgeInboxRows names the device in the outer delete too, so a batch
	// can only ever delete that device's rows; '' matches any type or
	// sender.
	purgeInboxRows = New(`
		DELETE FROM device_inbox
		WHERE user_id = $1 AND device_nid = $2 AND pos IN (
			SELECT pos FROM device_inbox
			WHERE user_id = $1 AND device_nid = $2
				AND ($3::text = '' OR type = $3) AND ($4::text = '' OR sender = $4)
			ORDER BY pos LIMIT $5)`)
)

func (q InboxQueries) InboxSummary(ctx context.Context, d inbox.Recipient) (int64, *time.Time, error) {
	var n int64
	var oldest *time.Time
	err := q.C.QueryRow(ctx, inboxSummary, d.UserID, d.NID).Scan(&n, &oldest)
	return n, oldest, err
}

func (q InboxQueries) InboxCountsByType(ctx context.Context, d inbox.Recipient, limit int) ([]inbox.KeyCount, error) {
	return q.keyCounts(ctx, inboxCountsByType, d, limit)
}

func (q InboxQueries) InboxCountsBySender(ctx context.Context, d inbox.Recipient, limit int) ([]inbox.KeyCount, error) {
	return q.keyCounts(ctx, inboxCountsBySender, d, limit)
}

func (q InboxQueries) keyCounts(ctx context.Context, s *Stmt, d inbox.Recipient, limit int) ([]inbox.KeyCount, error) {
	return Collect(ctx, q.C, s, []any{d.UserID, d.NID, limit}, func(r Rows) (k inbox.KeyCount, err error) {
		return k, r.Scan(&k.Key, &k.Count)
	})
}

func (q InboxQueries) UserInboxes(ctx context.Context, userID string) ([]inbox.InboxSize, error) {
	return Collect(ctx, q.C, userInboxes, []any{userID}, scanInboxSize)
}

func (q InboxQueries) LargestInboxes(ctx context.Context, limit int) ([]inbox.InboxSize, error) {
	return Collect(ctx, q.C, largestInboxes, []any{limit}, scanInboxSize)
}

func scanInboxSize(r Rows) (s inbox.InboxSize, err error) {
	return s, r.Scan(&s.UserID, &s.DeviceID, &s.NID, &s.Count, &s.Oldest)
}

func (q InboxQueries) PurgeInboxRows(ctx context.Context, d inbox.Recipient, f inbox.PurgeFilter, limit int) (int, error) {
	n, err := q.C.Exec(ctx, purgeInboxRows, d.UserID, d.NID, f.Type, f.Sender, limit)
	return int(n), err
}
