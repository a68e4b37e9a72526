package sqlstmt

import (
	"context"

	"github.com/todeviced/todeviced/internal/inbox"
)

// InboxQueries is the inbox.Queries statements of the to-device outbox
// the dialects share, on a Conn. A backend embeds it and adds the rest.
type InboxQueries struct{ C Conn }

var (
	peekInboxOutbox = New(`
		SELECT pos, destination, message_id, edu, enqueued_at FROM todevice_outbox
		WHERE destination = $1 ORDER BY pos LIMIT $2`)
	inboxOutboxDestinations = New(`
		SELECT destination FROM todevice_outbox_destinations d
		WHERE EXISTS (SELECT 1 FROM todevice_outbox o WHERE o.destination = d.destination)
		ORDER BY destination`)
)

func (q InboxQueries) PeekOutbox(ctx context.Context, destination string, limit int) ([]inbox.QueuedEDU, error) {
	return Collect(ctx, q.C, peekInboxOutbox, []any{destination, limit}, func(r Rows) (e inbox.QueuedEDU, err error) {
		var edu []byte
		err = r.Scan(&e.Pos, &e.Destination, &e.MessageID, &edu, &e.EnqueuedAt)
		e.EDU = edu
		return e, err
	})
}

func (q InboxQueries) OutboxDestinations(ctx context.Context) ([]string, error) {
	return Strings(ctx, q.C, inboxOutboxDestinations)
}
