package server

import (
	"context"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
)

// deviceListOutbox is the device-list outbox (devicelists.OutboundStore,
// in devicelists' types) as federation's sender, feed and housekeeper drain
// it (a federation.Outbox).
type deviceListOutbox struct{ s devicelists.OutboundStore }

var _ federation.Outbox = deviceListOutbox{}

func (deviceListOutbox) Name() string { return devicelists.OutboxSource }

func (o deviceListOutbox) Peek(ctx context.Context, destination string, limit int) ([]federation.SourceEDU, error) {
	q, err := o.s.PeekOutbox(ctx, destination, limit)
	out := make([]federation.SourceEDU, len(q))
	for i, e := range q {
		out[i] = federation.SourceEDU{Pos: e.Pos, Type: e.Type, EDU: e.EDU}
	}
	return out, err
}

func (o deviceListOutbox) Destinations(ctx context.Context) ([]string, error) {
	return o.s.OutboxDestinations(ctx)
}

func (o deviceListOutbox) Delete(ctx context.Context, destination string, positions []int64) (map[string]int, error) {
	return o.s.DeleteOutbox(ctx, destination, positions)
}

func (o deviceListOutbox) Expire(ctx context.Context, cutoff time.Time, limit int) ([]inbox.DestinationCount, error) {
	counts, err := o.s.ExpireOutbox(ctx, cutoff, limit)
	out := make([]inbox.DestinationCount, len(counts))
	for i, c := range counts {
		out[i] = inbox.DestinationCount(c)
	}
	return out, err
}

func (o deviceListOutbox) Backlog(ctx context.Context) (inbox.Backlog, error) {
	b, err := o.s.OutboxBacklog(ctx)
	return inbox.Backlog(b), err
}
