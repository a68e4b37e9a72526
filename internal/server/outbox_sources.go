package server

import (
	"context"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// The adapters between federation and the domains whose EDUs it carries:
// federation declares what it needs in its own types (federation.Outbox,
// federation.ToDeviceInbox), the inbox and devicelists know nothing of
// federation, and the wiring joins them here.

// toDeviceOutbox is the inbox's outbox of m.direct_to_device EDUs as a
// federation.Outbox.
type toDeviceOutbox struct{ store inbox.Store }

var _ federation.Outbox = toDeviceOutbox{}

// ToDeviceOutbox returns the inbox's to-device outbox as a
// federation.Outbox, as the server wires it (tests build housekeepers on it).
func ToDeviceOutbox(s inbox.Store) federation.Outbox { return toDeviceOutbox{s} }

func (toDeviceOutbox) Name() string { return inbox.OutboxSource }

func (o toDeviceOutbox) Peek(ctx context.Context, destination string, limit int) ([]federation.SourceEDU, error) {
	q, err := o.store.PeekOutbox(ctx, destination, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the to-device outbox of %s: %w", destination, err)
	}
	out := make([]federation.SourceEDU, len(q))
	for i, e := range q {
		out[i] = federation.SourceEDU{Pos: e.Pos, Type: matrix.EDUDirectToDevice, EDU: e.EDU}
	}
	return out, nil
}

func (o toDeviceOutbox) Destinations(ctx context.Context) ([]string, error) {
	return o.store.OutboxDestinations(ctx)
}

func (o toDeviceOutbox) Delete(ctx context.Context, destination string, positions []int64) (map[string]int, error) {
	n, err := o.store.DeleteOutbox(ctx, destination, positions)
	if err != nil {
		return nil, err
	}
	return map[string]int{matrix.EDUDirectToDevice: n}, nil
}

func (o toDeviceOutbox) Expire(ctx context.Context, cutoff time.Time, limit int) ([]federation.DestinationCount, error) {
	return fedCounts(o.store.ExpireOutbox(ctx, cutoff, limit))
}

func (o toDeviceOutbox) Backlog(ctx context.Context) (federation.Backlog, error) {
	b, err := o.store.OutboxBacklog(ctx)
	return federation.Backlog(b), err
}

// deviceListOutbox is the device-list outbox as a federation.Outbox.
// It drains devicelists.OutboundStore, which speaks devicelists' types.
type deviceListOutbox struct{ store devicelists.OutboundStore }

var _ federation.Outbox = deviceListOutbox{}

func (deviceListOutbox) Name() string { return devicelists.OutboxSource }

func (o deviceListOutbox) Peek(ctx context.Context, destination string, limit int) ([]federation.SourceEDU, error) {
	q, err := o.store.PeekOutbox(ctx, destination, limit)
	if err != nil {
		return nil, err
	}
	out := make([]federation.SourceEDU, len(q))
	for i, e := range q {
		out[i] = federation.SourceEDU{Pos: e.Pos, Type: e.Type, EDU: e.EDU}
	}
	return out, nil
}

func (o deviceListOutbox) Destinations(ctx context.Context) ([]string, error) {
	return o.store.OutboxDestinations(ctx)
}

func (o deviceListOutbox) Delete(ctx context.Context, destination string, positions []int64) (map[string]int, error) {
	return o.store.DeleteOutbox(ctx, destination, positions)
}

func (o deviceListOutbox) Expire(ctx context.Context, cutoff time.Time, limit int) ([]federation.DestinationCount, error) {
	return fedCounts(o.store.ExpireOutbox(ctx, cutoff, limit))
}

func (o deviceListOutbox) Backlog(ctx context.Context) (federation.Backlog, error) {
	b, err := o.store.OutboxBacklog(ctx)
	return federation.Backlog(b), err
}

// fedCounts converts an outbox's per-destination counts (the inbox's and
// the device lists' types have federation's shape) to federation's type.
func fedCounts[C ~struct {
	Destination string
	Count       int
}](counts []C, err error) ([]federation.DestinationCount, error) {
	if err != nil {
		return nil, err
	}
	out := make([]federation.DestinationCount, len(counts))
	for i, c := range counts {
		out[i] = federation.DestinationCount(c)
	}
	return out, nil
}

// toDeviceInbox is the inbox as the federation receiver stores inbound
// to-device EDUs into it.
type toDeviceInbox struct {
	serverName string
	inbox      *inbox.Service
}

var _ federation.ToDeviceInbox = toDeviceInbox{}

func (t toDeviceInbox) AcceptRemote(ctx context.Context, batch []federation.InboundToDevice) ([]bool, error) {
	accepts := make([]*inbox.RemoteAccept, len(batch))
	for i, e := range batch {
		ra, err := inbox.BuildRemoteAccept(t.serverName, e.Origin, e.MessageID, e.Sender, e.EventType, e.Messages)
		if err != nil {
			return nil, err // the receiver checked the recipients: never
		}
		accepts[i] = ra
	}
	results, err := t.inbox.AcceptRemote(ctx, accepts)
	if err != nil {
		return nil, err
	}
	dup := make([]bool, len(results))
	for i, r := range results {
		dup[i] = r.Duplicate
	}
	return dup, nil
}
