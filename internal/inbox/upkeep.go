package inbox

import (
	"context"
	"fmt"
	"time"
)

// exactCountBelow is the queue size up to which a backlog counts rows
// exactly; above it the database's estimate is used where it keeps one, so
// a scrape never scans a large table.
const exactCountBelow = 100_000

// Upkeep implements the Store methods off the hot path on a backend's
// statements; backends embed it in their Store.
type Upkeep struct{ db Database }

// NewUpkeep returns the upkeep use cases on db.
func NewUpkeep(db Database) Upkeep { return Upkeep{db: db} }

// PurgeDevice implements Store.
func (u Upkeep) PurgeDevice(ctx context.Context, d Recipient, after int64, limit int) (int, int64, error) {
	var positions []int64
	err := u.db.Each(ctx, func(ctx context.Context, q Queries) (err error) {
		positions, err = q.PurgeDeviceRows(ctx, d, after, limit)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("purging inbox rows: %w", err)
	}
	last := after
	for _, p := range positions {
		last = max(last, p)
	}
	return len(positions), last, nil
}

// each runs one counting statement.
func (u Upkeep) each(ctx context.Context, what string, stmt func(context.Context, Queries) (int, error)) (int, error) {
	var n int
	err := u.db.Each(ctx, func(ctx context.Context, q Queries) (err error) {
		n, err = stmt(ctx, q)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return n, nil
}

// PruneTxns implements Store.
func (u Upkeep) PruneTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return u.each(ctx, "pruning transaction records", func(ctx context.Context, q Queries) (int, error) {
		return q.PruneTxns(ctx, cutoff, limit)
	})
}

// ExpireMessages implements Store.
func (u Upkeep) ExpireMessages(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return u.each(ctx, "expiring messages", func(ctx context.Context, q Queries) (int, error) {
		return q.ExpireMessages(ctx, cutoff, limit)
	})
}

// PruneInboundDedupe implements Store.
func (u Upkeep) PruneInboundDedupe(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return u.each(ctx, "pruning inbound deduplication records", func(ctx context.Context, q Queries) (int, error) {
		return q.PruneInboundDedupe(ctx, cutoff, limit)
	})
}

// DeleteOutbox implements Store.
func (u Upkeep) DeleteOutbox(ctx context.Context, destination string, positions []int64) (int, error) {
	if len(positions) == 0 {
		return 0, nil
	}
	return u.each(ctx, "deleting outbox rows", func(ctx context.Context, q Queries) (int, error) {
		return q.DeleteOutbox(ctx, destination, positions)
	})
}

// ExpireOutbox implements Store.
func (u Upkeep) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]DestinationCount, error) {
	var dests []string
	err := u.db.Each(ctx, func(ctx context.Context, q Queries) (err error) {
		dests, err = q.ExpireOutbox(ctx, cutoff, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("expiring outbox rows: %w", err)
	}
	return CountByDestination(dests), nil
}

// Backlog implements Store.
func (u Upkeep) Backlog(ctx context.Context) (Backlog, error) {
	b, err := u.backlog(ctx, DeviceInbox)
	if err != nil {
		return Backlog{}, fmt.Errorf("reading backlog: %w", err)
	}
	return b, nil
}

// OutboxBacklog implements Store.
func (u Upkeep) OutboxBacklog(ctx context.Context) (Backlog, error) {
	b, err := u.backlog(ctx, ToDeviceOutbox)
	if err != nil {
		return Backlog{}, fmt.Errorf("reading outbox backlog: %w", err)
	}
	return b, nil
}

// backlog counts a queue exactly up to exactCountBelow rows and takes the
// database's estimate above (a backend without one always counts).
func (u Upkeep) backlog(ctx context.Context, queue Queue) (Backlog, error) {
	var b Backlog
	err := u.db.Read(ctx, func(ctx context.Context, q Queries) error {
		b = Backlog{}
		est, ok, err := q.EstimateRows(ctx, queue)
		if err != nil {
			return err
		}
		switch {
		case !ok:
			b.Pending, err = q.CountRows(ctx, queue, 0)
		case est < exactCountBelow:
			b.Pending, err = q.CountRows(ctx, queue, exactCountBelow)
		default:
			b.Pending = est
		}
		if err != nil {
			return err
		}
		b.Oldest, err = q.Oldest(ctx, queue)
		return err
	})
	return b, err
}

// PeekOutbox implements Store.
func (u Upkeep) PeekOutbox(ctx context.Context, destination string, limit int) ([]QueuedEDU, error) {
	var out []QueuedEDU
	err := u.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		out, err = q.PeekOutbox(ctx, destination, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading outbox: %w", err)
	}
	return out, nil
}

// OutboxDestinations implements Store.
func (u Upkeep) OutboxDestinations(ctx context.Context) ([]string, error) {
	var out []string
	err := u.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		out, err = q.OutboxDestinations(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing outbox destinations: %w", err)
	}
	return out, nil
}
