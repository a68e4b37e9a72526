package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"

	"github.com/todeviced/todeviced/internal/inbox"
)

// applyStale runs the MSC3944 rules (inbox/stale.go) on the rows of one
// accept about to be written, inside its write transaction (the single
// writer keeps the devices as the PostgreSQL locks do): it reads the
// pending rows of the same sender and type for the recipient devices,
// deletes the stale ones by position and returns the rows still to write
// and the plan (whose indexes are those of rows).
func applyStale(ctx context.Context, tx *sql.Tx, rows []inboxRow, sender, eventType string) ([]inboxRow, inbox.StalePlan, error) {
	news := make([]inbox.StaleRow, len(rows))
	for i, r := range rows {
		news[i] = inbox.StaleRow{UserID: r.user, NID: r.nid, Sender: sender, Type: eventType, Content: r.content}
	}
	targets := inbox.StaleTargets(news)
	if len(targets) == 0 {
		return rows, inbox.StalePlan{}, nil
	}
	var pending []inbox.StaleRow
	for chunk := range slices.Chunk(targets, maxRowsPerStatement) {
		// The OFFSET's "?" comes first in the statement.
		args := make([]any, 0, 4*len(chunk)+1)
		args = append(args, inbox.SeenHorizon-1)
		for _, t := range chunk {
			args = append(args, t.UserID, t.NID, t.Sender, t.Type)
		}
		// A row is unseen when it lies behind the device's first
		// inbox.SeenHorizon pending rows.
		q, err := tx.QueryContext(ctx, `
			SELECT i.user_id, i.device_nid, i.pos, i.sender, i.type, i.content,
				i.pos > coalesce((
					SELECT h.pos FROM device_inbox h WHERE h.device_nid = c.column2 AND h.user_id = c.column1
					ORDER BY h.pos LIMIT 1 OFFSET ?), 9223372036854775807)
			FROM (VALUES `+placeholders(len(chunk), 4)+`) AS c
			JOIN device_inbox i ON i.device_nid = c.column2 AND i.user_id = c.column1
			  AND i.sender = c.column3 AND i.type = c.column4
			ORDER BY i.pos`, args...)
		if err != nil {
			return nil, inbox.StalePlan{}, fmt.Errorf("reading pending requests: %w", err)
		}
		for q.Next() {
			var p inbox.StaleRow
			var content []byte
			if err := q.Scan(&p.UserID, &p.NID, &p.Pos, &p.Sender, &p.Type, &content, &p.Unseen); err != nil {
				q.Close()
				return nil, inbox.StalePlan{}, fmt.Errorf("reading pending requests: %w", err)
			}
			p.Content = content
			pending = append(pending, p)
		}
		if err := q.Err(); err != nil {
			q.Close()
			return nil, inbox.StalePlan{}, fmt.Errorf("reading pending requests: %w", err)
		}
		q.Close()
	}
	slices.SortFunc(pending, func(a, b inbox.StaleRow) int { return cmp.Compare(a.Pos, b.Pos) })
	plan := inbox.PlanStale(pending, news)
	for chunk := range slices.Chunk(plan.Delete, maxRowsPerStatement) {
		args := make([]any, 0, 2*len(chunk))
		for _, d := range chunk {
			args = append(args, d.NID, d.Pos)
		}
		if _, err := tx.ExecContext(ctx, `
			DELETE FROM device_inbox WHERE (device_nid, pos) IN (VALUES `+placeholders(len(chunk), 2)+`)`, args...); err != nil {
			return nil, inbox.StalePlan{}, fmt.Errorf("dropping stale messages: %w", err)
		}
	}
	kept := rows[:0:0]
	for i, r := range rows {
		if !plan.Skip[i] {
			kept = append(kept, r)
		}
	}
	return kept, plan, nil
}
