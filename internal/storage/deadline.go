package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
)

// DefaultCallTimeout bounds every store call (--database-timeout): a
// healthy database answers the slowest of them (a 64-send group accept, a
// 5 000-row expiry batch) in well under a second, and a client retrying a
// request is better served by a fast 503 than by a request that hangs while
// the database is frozen, unreachable or locked.
const DefaultCallTimeout = 5 * time.Second

// TimeoutError is what a store call returns when its deadline passed: it is
// context.DeadlineExceeded to errors.Is (so the HTTP layer answers 503
// M_UNAVAILABLE), and unwraps to what the backend returned.
type TimeoutError struct {
	Timeout time.Duration
	Err     error
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("database call took longer than --database-timeout (%s): %v", e.Timeout, e.Err)
}

func (e *TimeoutError) Unwrap() error { return e.Err }

// Is makes a timed-out call context.DeadlineExceeded, whatever the driver
// returned (SQLite reports an interrupted statement, pgx a closed
// connection).
func (e *TimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// deadline gives each store call a context that ends after d. Every call of
// the inbox and device-list stores is one database transaction (or one
// pipelined round trip), and the federation store's use cases each make one
// call of their federation.Database (timedFederationDB), so the deadline
// bounds exactly one database call; a long-poll makes a call per check, each with its own deadline, and
// waits between them without one. A frozen database (a stopped server, a
// lost network, a lock held elsewhere) never answers: only a client-side
// deadline ends the wait.
type deadline time.Duration

func (d deadline) run(ctx context.Context, fn func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(d))
	defer cancel()
	err := fn(cctx)
	if err != nil && cctx.Err() == context.DeadlineExceeded {
		return &TimeoutError{Timeout: time.Duration(d), Err: err}
	}
	return err
}

func call1[T any](d deadline, ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	var v T
	err := d.run(ctx, func(ctx context.Context) (err error) {
		v, err = fn(ctx)
		return err
	})
	return v, err
}

func call2[T, U any](d deadline, ctx context.Context, fn func(context.Context) (T, U, error)) (T, U, error) {
	var v T
	var w U
	err := d.run(ctx, func(ctx context.Context) (err error) {
		v, w, err = fn(ctx)
		return err
	})
	return v, w, err
}

// timedInbox is an inbox.Store whose every call has a deadline.
type timedInbox struct {
	s inbox.Store
	d deadline
}

var _ inbox.Store = timedInbox{}

func (t timedInbox) Epoch() string { return t.s.Epoch() }

func (t timedInbox) Accept(ctx context.Context, a *inbox.Accept) (inbox.AcceptResult, error) {
	return call1(t.d, ctx, func(ctx context.Context) (inbox.AcceptResult, error) { return t.s.Accept(ctx, a) })
}

func (t timedInbox) Sync(ctx context.Context, q inbox.SyncQuery) (inbox.SyncResult, error) {
	return call1(t.d, ctx, func(ctx context.Context) (inbox.SyncResult, error) { return t.s.Sync(ctx, q) })
}

func (t timedInbox) PurgeDevice(ctx context.Context, d inbox.Recipient, after int64, limit int) (int, int64, error) {
	return call2(t.d, ctx, func(ctx context.Context) (int, int64, error) { return t.s.PurgeDevice(ctx, d, after, limit) })
}

func (t timedInbox) PruneTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.PruneTxns(ctx, cutoff, limit) })
}

func (t timedInbox) ExpireMessages(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.ExpireMessages(ctx, cutoff, limit) })
}

func (t timedInbox) Backlog(ctx context.Context) (inbox.Backlog, error) {
	return call1(t.d, ctx, t.s.Backlog)
}

func (t timedInbox) PeekOutbox(ctx context.Context, destination string, limit int) ([]inbox.QueuedEDU, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]inbox.QueuedEDU, error) { return t.s.PeekOutbox(ctx, destination, limit) })
}

func (t timedInbox) AcceptRemote(ctx context.Context, batch []*inbox.RemoteAccept) ([]inbox.AcceptResult, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]inbox.AcceptResult, error) { return t.s.AcceptRemote(ctx, batch) })
}

func (t timedInbox) PruneInboundDedupe(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.PruneInboundDedupe(ctx, cutoff, limit) })
}

func (t timedInbox) DeleteOutbox(ctx context.Context, destination string, positions []int64) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.DeleteOutbox(ctx, destination, positions) })
}

func (t timedInbox) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]inbox.DestinationCount, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]inbox.DestinationCount, error) {
		return t.s.ExpireOutbox(ctx, cutoff, limit)
	})
}

func (t timedInbox) OutboxDestinations(ctx context.Context) ([]string, error) {
	return call1(t.d, ctx, t.s.OutboxDestinations)
}

func (t timedInbox) InboxStats(ctx context.Context, d inbox.Recipient) (inbox.InboxStats, error) {
	return call1(t.d, ctx, func(ctx context.Context) (inbox.InboxStats, error) { return t.s.InboxStats(ctx, d) })
}

func (t timedInbox) UserInboxes(ctx context.Context, userID string) ([]inbox.InboxSize, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]inbox.InboxSize, error) { return t.s.UserInboxes(ctx, userID) })
}

func (t timedInbox) LargestInboxes(ctx context.Context, limit int) ([]inbox.InboxSize, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]inbox.InboxSize, error) { return t.s.LargestInboxes(ctx, limit) })
}

func (t timedInbox) PurgeInbox(ctx context.Context, d inbox.Recipient, f inbox.PurgeFilter, limit int) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.PurgeInbox(ctx, d, f, limit) })
}

func (t timedInbox) OutboxBacklog(ctx context.Context) (inbox.Backlog, error) {
	return call1(t.d, ctx, t.s.OutboxBacklog)
}

// timedDevices is a devicelists.Store whose every call has a deadline.
type timedDevices struct {
	s devicelists.Store
	d deadline
}

var _ devicelists.Store = timedDevices{}

func (t timedDevices) PutDevice(ctx context.Context, p devicelists.PutDevice) (devicelists.Device, bool, error) {
	return call2(t.d, ctx, func(ctx context.Context) (devicelists.Device, bool, error) { return t.s.PutDevice(ctx, p) })
}

func (t timedDevices) DeleteDevice(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.Device, error) { return t.s.DeleteDevice(ctx, userID, deviceID) })
}

func (t timedDevices) DeviceByToken(ctx context.Context, tokenHash []byte) (devicelists.Device, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.Device, error) { return t.s.DeviceByToken(ctx, tokenHash) })
}

func (t timedDevices) Device(ctx context.Context, userID, deviceID string) (devicelists.Device, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.Device, error) { return t.s.Device(ctx, userID, deviceID) })
}

func (t timedDevices) UserDevices(ctx context.Context, userID string) ([]devicelists.Device, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.Device, error) { return t.s.UserDevices(ctx, userID) })
}

func (t timedDevices) Tombstones(ctx context.Context, limit int) ([]devicelists.Device, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.Device, error) { return t.s.Tombstones(ctx, limit) })
}

func (t timedDevices) ForgetTombstone(ctx context.Context, nid int64) error {
	return t.d.run(ctx, func(ctx context.Context) error { return t.s.ForgetTombstone(ctx, nid) })
}

func (t timedDevices) PutCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage) (bool, error) {
	return call1(t.d, ctx, func(ctx context.Context) (bool, error) { return t.s.PutCrossSigning(ctx, userID, keys) })
}

func (t timedDevices) SetRoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	return call1(t.d, ctx, func(ctx context.Context) (bool, error) { return t.s.SetRoomEncrypted(ctx, roomID) })
}

func (t timedDevices) SetMemberships(ctx context.Context, roomID string, ms []devicelists.Membership) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.SetMemberships(ctx, roomID, ms) })
}

func (t timedDevices) StreamState(ctx context.Context) (devicelists.StreamState, error) {
	return call1(t.d, ctx, t.s.StreamState)
}

func (t timedDevices) Changes(ctx context.Context, userID string, from, to int64) (devicelists.Changes, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.Changes, error) { return t.s.Changes(ctx, userID, from, to) })
}

func (t timedDevices) SharedUsers(ctx context.Context, userID string) ([]string, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]string, error) { return t.s.SharedUsers(ctx, userID) })
}

func (t timedDevices) LocalKeys(ctx context.Context, query map[string][]string) ([]devicelists.DeviceKeys, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.DeviceKeys, error) { return t.s.LocalKeys(ctx, query) })
}

func (t timedDevices) CrossSigning(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	return call1(t.d, ctx, func(ctx context.Context) (map[string]map[string]json.RawMessage, error) {
		return t.s.CrossSigning(ctx, userIDs)
	})
}

func (t timedDevices) PruneStream(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.PruneStream(ctx, cutoff, limit) })
}

func (t timedDevices) PeekOutbox(ctx context.Context, destination string, limit int) ([]devicelists.QueuedEDU, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.QueuedEDU, error) {
		return t.s.PeekOutbox(ctx, destination, limit)
	})
}

func (t timedDevices) OutboxDestinations(ctx context.Context) ([]string, error) {
	return call1(t.d, ctx, t.s.OutboxDestinations)
}

func (t timedDevices) DeleteOutbox(ctx context.Context, destination string, positions []int64) (map[string]int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (map[string]int, error) {
		return t.s.DeleteOutbox(ctx, destination, positions)
	})
}

func (t timedDevices) ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]devicelists.DestinationCount, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.DestinationCount, error) {
		return t.s.ExpireOutbox(ctx, cutoff, limit)
	})
}

func (t timedDevices) OutboxBacklog(ctx context.Context) (devicelists.Backlog, error) {
	return call1(t.d, ctx, t.s.OutboxBacklog)
}

func (t timedDevices) UserDeviceList(ctx context.Context, userID string) (devicelists.UserDeviceList, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.UserDeviceList, error) { return t.s.UserDeviceList(ctx, userID) })
}

func (t timedDevices) ApplyRemoteUpdate(ctx context.Context, u devicelists.RemoteUpdate) (devicelists.RemoteOutcome, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.RemoteOutcome, error) { return t.s.ApplyRemoteUpdate(ctx, u) })
}

func (t timedDevices) ApplyRemoteSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) (devicelists.RemoteOutcome, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.RemoteOutcome, error) {
		return t.s.ApplyRemoteSigningKeys(ctx, userID, keys)
	})
}

func (t timedDevices) ClaimResyncs(ctx context.Context, limit int, lease time.Duration) ([]devicelists.ResyncJob, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.ResyncJob, error) { return t.s.ClaimResyncs(ctx, limit, lease) })
}

func (t timedDevices) CompleteResync(ctx context.Context, l devicelists.RemoteDeviceList) (devicelists.ResyncResult, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.ResyncResult, error) { return t.s.CompleteResync(ctx, l) })
}

func (t timedDevices) FailResync(ctx context.Context, userID string, failures int, retryIn time.Duration) error {
	return t.d.run(ctx, func(ctx context.Context) error { return t.s.FailResync(ctx, userID, failures, retryIn) })
}

func (t timedDevices) RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]devicelists.RemoteDeviceList, error) {
	return call1(t.d, ctx, func(ctx context.Context) (map[string]devicelists.RemoteDeviceList, error) {
		return t.s.RemoteDeviceLists(ctx, userIDs)
	})
}

func (t timedDevices) SweepRemoteUsers(ctx context.Context, after string, limit int) (string, int, error) {
	return call2(t.d, ctx, func(ctx context.Context) (string, int, error) { return t.s.SweepRemoteUsers(ctx, after, limit) })
}

func (t timedDevices) RemoteCache(ctx context.Context, userID string) (devicelists.RemoteCacheState, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.RemoteCacheState, error) { return t.s.RemoteCache(ctx, userID) })
}

func (t timedDevices) ForceResync(ctx context.Context, userID string) (bool, error) {
	return call1(t.d, ctx, func(ctx context.Context) (bool, error) { return t.s.ForceResync(ctx, userID) })
}

func (t timedDevices) RemoteUserCount(ctx context.Context) (int, error) {
	return call1(t.d, ctx, t.s.RemoteUserCount)
}

func (t timedDevices) ResyncIfUnknownDevice(ctx context.Context, userID, deviceID string) (bool, error) {
	return call1(t.d, ctx, func(ctx context.Context) (bool, error) { return t.s.ResyncIfUnknownDevice(ctx, userID, deviceID) })
}

// timedFederationDB is a federation.Database whose every call (one
// transaction, or the statements of one use case on the pool) has a
// deadline.
type timedFederationDB struct {
	db federation.Database
	d  deadline
}

func (t timedFederationDB) InTx(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return t.d.run(ctx, func(ctx context.Context) error { return t.db.InTx(ctx, fn) })
}

func (t timedFederationDB) Each(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return t.d.run(ctx, func(ctx context.Context) error { return t.db.Each(ctx, fn) })
}

func (t timedFederationDB) Read(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return t.d.run(ctx, func(ctx context.Context) error { return t.db.Read(ctx, fn) })
}

func (t timedDevices) UploadKeys(ctx context.Context, u devicelists.KeyUpload) (devicelists.KeyCounts, bool, error) {
	return call2(t.d, ctx, func(ctx context.Context) (devicelists.KeyCounts, bool, error) { return t.s.UploadKeys(ctx, u) })
}

func (t timedDevices) PutDehydrated(ctx context.Context, p devicelists.DehydratedPut) (devicelists.Device, *devicelists.Device, error) {
	return call2(t.d, ctx, func(ctx context.Context) (devicelists.Device, *devicelists.Device, error) {
		return t.s.PutDehydrated(ctx, p)
	})
}

func (t timedDevices) DeleteDehydrated(ctx context.Context, userID string) (devicelists.Device, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.Device, error) { return t.s.DeleteDehydrated(ctx, userID) })
}

func (t timedDevices) Dehydrated(ctx context.Context, userID string) (devicelists.DehydratedDevice, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.DehydratedDevice, error) { return t.s.Dehydrated(ctx, userID) })
}

func (t timedDevices) ClaimKeys(ctx context.Context, claims []devicelists.KeyClaim) ([]devicelists.ClaimedKey, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.ClaimedKey, error) { return t.s.ClaimKeys(ctx, claims) })
}

func (t timedDevices) KeyCounts(ctx context.Context, nid int64) (devicelists.KeyCounts, error) {
	return call1(t.d, ctx, func(ctx context.Context) (devicelists.KeyCounts, error) { return t.s.KeyCounts(ctx, nid) })
}

func (t timedDevices) UploadCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage,
	check func(map[string]json.RawMessage, time.Time) (bool, error)) (bool, error) {
	return call1(t.d, ctx, func(ctx context.Context) (bool, error) { return t.s.UploadCrossSigning(ctx, userID, keys, check) })
}

func (t timedDevices) AllowCrossSigningReplacement(ctx context.Context, userID string, until time.Time) error {
	return t.d.run(ctx, func(ctx context.Context) error { return t.s.AllowCrossSigningReplacement(ctx, userID, until) })
}

func (t timedDevices) PutSignatures(ctx context.Context, signer string, sigs []devicelists.Signature) (int, error) {
	return call1(t.d, ctx, func(ctx context.Context) (int, error) { return t.s.PutSignatures(ctx, signer, sigs) })
}

func (t timedDevices) Signatures(ctx context.Context, targets []string) ([]devicelists.Signature, error) {
	return call1(t.d, ctx, func(ctx context.Context) ([]devicelists.Signature, error) { return t.s.Signatures(ctx, targets) })
}
