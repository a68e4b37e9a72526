package server

import (
	"context"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
)

// Background job intervals.
const (
	housekeepEvery = 10 * time.Minute
	backlogEvery   = 15 * time.Second
	purgeSweep     = time.Minute
	// readyEvery refreshes todeviced_database_ready between /readyz probes,
	// so the metric (and its alert) works where nothing probes /readyz.
	readyEvery = 15 * time.Second
)

// Start runs the background jobs: the wake-up listener, the purge of deleted
// devices' inboxes and housekeeping.
func (s *Server) Start(ctx context.Context) {
	ctx, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	s.backend.Start(ctx)
	s.kickPurge() // finish purges a previous process left undone
	s.goJob(ctx, "purge", purgeSweep, func(ctx context.Context) error {
		return s.inbox.PurgeDeleted(ctx, deletedDevices{s.devices})
	}, s.purgeKick)
	s.goJob(ctx, "housekeeping", housekeepEvery, s.inbox.Housekeep, nil)
	s.goJob(ctx, "device-list-pruning", housekeepEvery, func(ctx context.Context) error {
		return s.devices.PruneStream(ctx, devicelists.DefaultStreamRetention)
	}, nil)
	s.goJob(ctx, "backlog", backlogEvery, s.inbox.RefreshBacklog, nil)
	s.goJob(ctx, "readiness", readyEvery, func(ctx context.Context) error {
		_ = s.checkDatabase(ctx) // the gauge reports it; the failing jobs log it
		return nil
	}, nil)
	s.goJob(ctx, "federation-housekeeping", housekeepEvery, s.housekeeper.Housekeep, nil)
	s.jobs.Go(func() { s.trimHeap(ctx) })
	s.goJob(ctx, "federation-gauges", backlogEvery, s.housekeeper.RefreshGauges, nil)
	if s.sender != nil {
		s.jobs.Go(func() { s.sender.Run(ctx) })
	}
	if s.deviceFed != nil {
		s.jobs.Go(func() { s.deviceFed.RunResync(ctx) })
		s.goJob(ctx, "device-list-sweep", housekeepEvery, s.deviceFed.SweepRemote, nil)
		s.goJob(ctx, "device-list-gauges", backlogEvery, s.deviceFed.RefreshGauges, nil)
	}
}

func (s *Server) goJob(ctx context.Context, name string, every time.Duration, fn func(context.Context) error, kick <-chan struct{}) {
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				s.log.ErrorContext(ctx, "background job failed", "job", name, "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-kick:
			}
		}
	}()
}

func (s *Server) kickPurge() {
	select {
	case s.purgeKick <- struct{}{}:
	default:
	}
}

// deletedDevices hands the registry's tombstones to the inbox's purge, so
// that the inbox needs nothing of devicelists.
type deletedDevices struct{ devices *devicelists.Service }

func (d deletedDevices) Tombstones(ctx context.Context, limit int) ([]inbox.Recipient, error) {
	tombs, err := d.devices.Tombstones(ctx, limit)
	if err != nil {
		return nil, err
	}
	out := make([]inbox.Recipient, len(tombs))
	for i, t := range tombs {
		out[i] = inbox.Recipient{UserID: t.UserID, NID: t.NID}
	}
	return out, nil
}

func (d deletedDevices) ForgetTombstone(ctx context.Context, nid int64) error {
	return d.devices.ForgetTombstone(ctx, nid)
}
