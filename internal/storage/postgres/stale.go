package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/inbox"
)

// MSC3944 on the accept path (inbox/stale.go). Only an accept with a
// message that has a rule pays for it: one more round trip, reading the
// pending rows of the same sender and type for the recipient devices it
// has locked, and one DELETE by primary key queued with its writes.

// stalePendingSQL reads the pending rows a set of (device, sender, type)
// names, each from its device's primary-key range.
// A row is unseen when it lies behind the device's first $5
// (inbox.SeenHorizon) pending rows.
const stalePendingSQL = `
	SELECT i.user_id, i.device_nid, i.pos, i.sender, i.type, i.content, i.pos > coalesce(h.pos, 9223372036854775807)
	FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS c(u, n, s, t)
	JOIN device_inbox i ON i.user_id = c.u AND i.device_nid = c.n AND i.sender = c.s AND i.type = c.t
	LEFT JOIN LATERAL (
		SELECT pos FROM device_inbox WHERE user_id = c.u AND device_nid = c.n
		ORDER BY pos OFFSET $5 LIMIT 1) h ON true
	ORDER BY i.pos`

// staleDeleteSQL deletes exactly the listed rows, by primary key.
const staleDeleteSQL = `
	DELETE FROM device_inbox
	WHERE (user_id, device_nid, pos) IN (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]))`

// applyStale runs the rules on rows about to be written, inside the
// accept's transaction with their devices locked: it reads the pending
// rows the rules look at, removes the skipped new rows from rows, and
// queues the delete of the stale pending ones to b. The plan's indexes are
// those of rows before the call.
func applyStale(ctx context.Context, q conn, rows *recipientRows, b *pgx.Batch) (inbox.StalePlan, error) {
	news := make([]inbox.StaleRow, len(rows.nids))
	for i := range rows.nids {
		news[i] = inbox.StaleRow{UserID: rows.users[i], NID: rows.nids[i], Sender: rows.senders[i], Type: rows.types[i], Content: rows.contents[i]}
	}
	targets := inbox.StaleTargets(news)
	if len(targets) == 0 {
		return inbox.StalePlan{}, nil
	}
	users, nids, senders, types := make([]string, len(targets)), make([]int64, len(targets)), make([]string, len(targets)), make([]string, len(targets))
	for i, t := range targets {
		users[i], nids[i], senders[i], types[i] = t.UserID, t.NID, t.Sender, t.Type
	}
	res, err := q.Query(ctx, stalePendingSQL, users, nids, senders, types, inbox.SeenHorizon-1)
	if err != nil {
		return inbox.StalePlan{}, fmt.Errorf("reading pending requests: %w", err)
	}
	var pending []inbox.StaleRow
	var p inbox.StaleRow
	var content []byte
	if _, err := pgx.ForEachRow(res, []any{&p.UserID, &p.NID, &p.Pos, &p.Sender, &p.Type, &content, &p.Unseen}, func() error {
		p.Content = append([]byte(nil), content...)
		pending = append(pending, p)
		return nil
	}); err != nil {
		return inbox.StalePlan{}, fmt.Errorf("reading pending requests: %w", err)
	}
	plan := inbox.PlanStale(pending, news)
	if len(plan.Delete) > 0 {
		du, dn, dp := make([]string, len(plan.Delete)), make([]int64, len(plan.Delete)), make([]int64, len(plan.Delete))
		for i, d := range plan.Delete {
			du[i], dn[i], dp[i] = d.UserID, d.NID, d.Pos
		}
		b.Queue(staleDeleteSQL, du, dn, dp)
	}
	rows.filter(plan.Skip)
	return plan, nil
}

// filter removes the rows skip marks.
func (r *recipientRows) filter(skip []bool) {
	n := 0
	for i := range r.nids {
		if skip[i] {
			continue
		}
		r.users[n], r.nids[n], r.senders[n], r.types[n], r.contents[n] = r.users[i], r.nids[i], r.senders[i], r.types[i], r.contents[i]
		n++
	}
	r.users, r.nids, r.senders, r.types, r.contents = r.users[:n], r.nids[:n], r.senders[:n], r.types[:n], r.contents[:n]
}
