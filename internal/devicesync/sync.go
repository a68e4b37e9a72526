// Package devicesync is one device's sync: the to-device messages of its
// inbox and the device-list changes its user must hear of, from a since to
// the next. It owns the tokens that carry those positions (both halves of
// the client /sync token, one parser and one digit reader), the order of a
// sync (acknowledge what the since says was delivered, then fetch), the
// long-poll (register with the wake-up hub, check again, wait until woken
// or timed out) and the device-list answer (changed and left since a
// position, everyone for a position of another epoch).
//
// The client /sync, the internal /sync, /keys/changes and a sliding-sync
// extension only parse their parameters into a Request or ListsSince and
// write the Result as JSON: the rules live here once.
package devicesync

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// ErrDeviceGone is returned by Sync when the device was deleted (before or
// while it waited). Each API answers it in its own words.
var ErrDeviceGone = inbox.ErrDeviceGone

// ErrTokenRevoked is returned by Sync when a check guarded by
// Request.TokenHash found that the token no longer names the device (before
// or while it waited): that check did nothing.
var ErrTokenRevoked = inbox.ErrTokenRevoked

// Config is what a Service syncs from.
type Config struct {
	Inbox   *inbox.Service
	Devices *devicelists.Service
	Hub     *wakeup.Hub
}

// Service answers syncs. It is safe for concurrent use.
type Service struct {
	inbox   *inbox.Service
	devices *devicelists.Service
	hub     *wakeup.Hub
	counts  countsSeen
	quiet   *quietDevices
	// reads and skips count checks that read the store (once the read is
	// done) and first checks skipped (quietDevices).
	reads, skips atomic.Uint64
}

// Checks returns how many sync checks read the store, and how many first
// checks of long-polls were skipped because this replica knew their device
// quiet (the todeviced_sync_checks_total counter).
func (s *Service) Checks() (read, skipped uint64) { return s.reads.Load(), s.skips.Load() }

// New returns a sync service.
func New(cfg Config) *Service {
	return &Service{inbox: cfg.Inbox, devices: cfg.Devices, hub: cfg.Hub, quiet: newQuietDevices(cfg.Hub)}
}

// Epoch is the database epoch every token carries.
func (s *Service) Epoch() string { return s.inbox.Epoch() }

// Request is one device's sync.
type Request struct {
	// Device is the syncing device.
	Device inbox.Recipient
	// ToDevice is the to-device since: what it covers is acknowledged
	// (deleted) before anything is read. Its zero value (or a position of
	// another device) is an initial sync of the inbox.
	ToDevice inbox.Position
	// Lists is the device-list since; its zero value asks for no
	// device-list answer.
	Lists ListsSince
	// Limit bounds the to-device events returned (inbox.DefaultSyncLimit
	// when 0 or larger).
	Limit int
	// Timeout is how long to wait for something new; 0 answers at once.
	Timeout time.Duration
	// ListsOnly reads no to-device messages (a sliding-sync connection
	// without the to_device extension): nothing is acknowledged or
	// returned, and only the user's device lists end the wait.
	ListsOnly bool
	// KeyCounts asks for the device's one-time-key counts and unused
	// fallback key types (device_one_time_keys_count,
	// device_unused_fallback_key_types: the classic and internal /sync and
	// the sliding-sync e2ee extension). They are read on every check, in
	// the inbox's round trip (with ListsOnly, in one of their own); a
	// change of them during the wait ends it (an upload or a claim wakes
	// the device).
	KeyCounts bool
	// TokenHash, when set, guards every check of the sync: the inbox
	// acknowledges, reads and answers only while the access token with
	// this hash still names Device (inbox.SyncQuery.TokenHash); otherwise
	// Sync returns ErrTokenRevoked. So a sync may start on a device
	// remembered for its token, and a token revoked while the sync waits
	// ends it at its next check. ListsOnly checks read no inbox and are
	// not guarded.
	TokenHash []byte
}

// Result is what a sync found, and where the next one starts.
type Result struct {
	epoch string
	// ToDevice holds the events (never nil), whether more are pending
	// (Limited) and the next to-device position (ToDevice.Next).
	ToDevice inbox.Batch
	// Lists is nil when the request's Lists was not incremental; otherwise
	// changed and left, each sorted and never nil.
	Lists *devicelists.Changes
	// ListsHead is the device-list position the answer covers: the next
	// device-list since.
	ListsHead int64
	// OneTimeKeys (signed_curve25519 always present) and FallbackTypes
	// are the device's counts, nil when not asked for.
	OneTimeKeys   map[string]int
	FallbackTypes []string
}

// Token is the next client /sync token.
func (r Result) Token() string { return FormatToken(r.epoch, r.ToDevice.Next, r.ListsHead) }

// ToDeviceToken is the next to-device since, alone.
func (r Result) ToDeviceToken() string { return FormatToDevice(r.epoch, r.ToDevice.Next) }

// ListsToken is the next device-list since, alone.
func (r Result) ListsToken() string { return FormatLists(r.epoch, r.ListsHead) }

// Sync acknowledges req.ToDevice and returns the device's pending messages
// and, for an incremental req.Lists, its user's device-list changes. With
// nothing new it waits, up to req.Timeout, for a wake-up of the device's
// inbox or of the user's device lists, and checks again; it also returns
// empty when the hub closes (shutdown) and with ctx.Err() when ctx ends.
//
// Only the first check acknowledges; later ones read from the acknowledged
// position, so a since is acknowledged once however long the wait. A since
// above every position issued is refused (M_INVALID_PARAM) by the store's
// sync query before it deletes anything. With req.TokenHash, a check that
// finds the token revoked ends the sync with ErrTokenRevoked.
//
// A long-poll bringing the since this replica last handed the device, with
// no wake-up of the device or its user heard since, waits without its
// first check (quietDevices): that check is then the first wake-up's, or
// one made at the end, so every answer still comes from a check and every
// since is acknowledged.
func (s *Service) Sync(ctx context.Context, req Request) (Result, error) {
	r := s.prepare(req)
	_, err := s.hub.Poll(ctx, req.Timeout, r.keys, r.check)
	return r.end(ctx, err)
}

// Waiting is a sync that waits: Begin's, for its owner to Linger, Wait or
// Detach; or Park's, for its owner to Cancel.
type Waiting struct {
	p *wakeup.Parked
	r *syncRun
}

// Cancel ends a parked or detached sync with err.
func (w *Waiting) Cancel(err error) { w.p.Cancel(err) }

// Begin is Sync's first check (the only one that acknowledges), on the
// caller's goroutine. It returns the answer, with a nil Waiting, when that
// check found something or failed or req.Timeout is 0; otherwise a
// Waiting, already registered with the hub so no wake-up after the check
// is missed.
func (s *Service) Begin(ctx context.Context, req Request) (*Waiting, Result, error) {
	r := s.prepare(req)
	p, _, err := s.hub.Begin(ctx, req.Timeout, r.keys, r.check)
	if p == nil {
		res, err := r.end(ctx, err)
		return nil, res, err
	}
	return &Waiting{p: p, r: r}, Result{}, nil
}

// Linger waits for at most d on the caller's goroutine; more says the sync
// is still waiting (then Wait or Detach it), otherwise res and err are the
// answer.
func (w *Waiting) Linger(ctx context.Context, d time.Duration) (res Result, err error, more bool) {
	_, err, more = w.p.Linger(ctx, d)
	if more {
		return Result{}, nil, true
	}
	res, err = w.r.end(ctx, err)
	return res, err, false
}

// Wait waits on the caller's goroutine, as Sync does after its first check.
func (w *Waiting) Wait(ctx context.Context) (Result, error) {
	_, err := w.p.Wait(ctx)
	return w.r.end(ctx, err)
}

// Detach waits without a goroutine (wakeup.Parked.Detach): later checks
// run with ctx, and finish gets the answer once, on a worker.
func (w *Waiting) Detach(ctx context.Context, finish func(Result, error)) {
	w.p.Detach(ctx, func(_ bool, err error) { finish(w.r.end(ctx, err)) })
}

// Park is Sync without a goroutine waiting: every check, the first
// included, runs on the wake-up hub's workers (wakeup.Hub.Park), and finish
// is called once, on a worker, with what Sync would have returned.
// req.Timeout must be positive. The returned Waiting is only for Cancel.
func (s *Service) Park(ctx context.Context, req Request, finish func(Result, error)) *Waiting {
	r := s.prepare(req)
	return &Waiting{p: s.hub.Park(ctx, req.Timeout, r.keys, r.check, func(_ bool, err error) { finish(r.end(ctx, err)) }), r: r}
}

// syncRun is one sync's state across its checks.
type syncRun struct {
	s    *Service
	req  Request
	keys []wakeup.Key
	res  *Result
	pos  inbox.Position
	dl   ListsSince
	// checked: a check has read the store (a skipped first check has not).
	checked bool
	skipped bool
	// ticket is the quietDevices ticket of the latest check.
	ticket uint64
}

// prepare returns a sync's run: what it waits for and its check (which
// fills res).
func (s *Service) prepare(req Request) *syncRun {
	r := &syncRun{s: s, req: req, pos: req.ToDevice, dl: req.Lists, res: &Result{epoch: s.Epoch()}}
	r.keys = []wakeup.Key{wakeup.DeviceKey(req.Device.NID), wakeup.UserKey(req.Device.UserID)}
	if req.ListsOnly && !req.KeyCounts {
		r.keys = r.keys[1:]
	}
	return r
}

// quietable: the sync waits on its device's key and its user's (it reads
// the inbox, or the device's key counts), so every change a check would
// report wakes one of them.
func (r *syncRun) quietable() bool { return !r.req.ListsOnly || r.req.KeyCounts }

// check is one check of the sync, for the hub.
func (r *syncRun) check(ctx context.Context) (bool, error) {
	s, req := r.s, &r.req
	if r.quietable() {
		if !r.checked && !r.skipped && req.Timeout > 0 && s.quiet.quiet(r.keys[0], req) {
			r.skipped = true
			s.skips.Add(1)
			return false, nil
		}
		r.ticket = s.quiet.arm(r.keys[0], r.keys[1])
	}
	c, err := s.check(ctx, r.req, r.pos)
	s.reads.Add(1)
	if err != nil {
		return false, err
	}
	res := r.res
	b, head := c.Batch, c.DeviceListHead
	r.pos = b.Next
	res.ToDevice = b
	res.ListsHead = head
	found := len(b.Events) > 0
	if r.dl.Incremental {
		var ch devicelists.Changes
		if ch, r.dl, err = s.listChanges(ctx, req.Device.UserID, r.dl, head); err != nil {
			return false, err
		}
		res.Lists = &ch
		found = found || len(ch.Changed)+len(ch.Left) > 0
	}
	if req.KeyCounts {
		otk, fb := c.KeyCounts.OneTimeKeys, c.KeyCounts.UnusedFallback
		fp := countsFingerprint(otk, fb)
		prev, seen := s.counts.swap(req.Device.NID, fp)
		if r.checked {
			// The counts the wait started with are what the client
			// knows: a later check that reads others ends the wait.
			found = found || !maps.Equal(otk, res.OneTimeKeys) || !slices.Equal(fb, res.FallbackTypes)
		} else {
			// Counts that changed since this replica last handed
			// the device its counts are news (countsSeen).
			found = found || (seen && prev != fp)
		}
		res.OneTimeKeys, res.FallbackTypes = otk, fb
	}
	r.checked = true
	return found, nil
}

// end is the sync's answer once its wait ended with err. A sync whose
// first check was skipped and that no wake-up checked since checks now,
// so the since is acknowledged and the answer read. An answer handed out
// from a check no wake-up followed leaves the device quiet at it.
func (r *syncRun) end(ctx context.Context, err error) (Result, error) {
	if err == nil && !r.checked {
		_, err = r.finalCheck(ctx)
	}
	if err != nil {
		return r.res.answer(), err
	}
	if r.quietable() && !r.res.ToDevice.Limited {
		r.s.quiet.settle(r.keys[0], r.ticket, quietAt{
			toDevice: r.res.ToDevice.Next, listsHead: r.res.ListsHead, keyCounts: r.req.KeyCounts, listsOnly: r.req.ListsOnly,
			token: r.req.TokenHash,
		})
	}
	return r.res.answer(), nil
}

// finalCheck is check outside the hub, which recovers a panic in a check
// of a parked sync: so does this one.
func (r *syncRun) finalCheck(ctx context.Context) (found bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			found, err = false, fmt.Errorf("sync check panicked: %v", v)
		}
	}()
	return r.check(ctx)
}

// answer is the Result as handed out: never a nil event list.
func (r *Result) answer() Result {
	if r.ToDevice.Events == nil {
		r.ToDevice.Events = []inbox.Event{}
	}
	return *r
}

// check reads what one check of a sync needs from the store: with the
// inbox, one round trip (the device-list head read before the messages, so
// the answer never claims a position whose changes it did not include, and
// the key counts); with ListsOnly, the head and the counts alone. The
// counts are as /sync reports them (devicelists.WithCurveCount).
func (s *Service) check(ctx context.Context, req Request, pos inbox.Position) (inbox.Check, error) {
	if !req.ListsOnly {
		c, err := s.inbox.SyncCheck(ctx, inbox.CheckQuery{
			Device: req.Device, Since: pos, Limit: req.Limit, KeyCounts: req.KeyCounts, TokenHash: req.TokenHash,
		})
		if err == nil && req.KeyCounts {
			c.KeyCounts.OneTimeKeys = devicelists.WithCurveCount(c.KeyCounts.OneTimeKeys)
		}
		return c, err
	}
	c := inbox.Check{Batch: inbox.Batch{Next: pos}}
	var err error
	if c.DeviceListHead, err = s.devices.Head(ctx); err != nil {
		return c, err
	}
	if req.KeyCounts {
		c.KeyCounts.OneTimeKeys, c.KeyCounts.UnusedFallback, err = s.devices.KeyCounts(ctx, req.Device.NID)
	}
	return c, err
}

// listChanges answers an incremental device-list since up to head, and
// returns where the next check of the same long-poll starts.
func (s *Service) listChanges(ctx context.Context, userID string, dl ListsSince, head int64) (devicelists.Changes, ListsSince, error) {
	switch {
	case dl.Everyone:
		c, err := s.devices.Everyone(ctx, userID)
		return c, ListsAt(head), err
	case head != dl.Pos:
		c, err := s.devices.Changes(ctx, userID, dl.Pos, head)
		if err == nil && len(c.Changed)+len(c.Left) == 0 {
			// Nothing for us below head: later checks start there.
			dl = ListsAt(head)
		}
		return c, dl, err
	default:
		return devicelists.Changes{Changed: []string{}, Left: []string{}}, dl, nil
	}
}

// KeyChanges answers /keys/changes: the users whose devices changed between
// two device-list positions. A position of another epoch makes the answer
// everyone the user shares an encrypted room with; a position never issued
// is M_INVALID_PARAM.
func (s *Service) KeyChanges(ctx context.Context, userID string, from, to ListsSince) (devicelists.Changes, error) {
	if from.Everyone || to.Everyone {
		return s.devices.Everyone(ctx, userID)
	}
	return s.devices.Changes(ctx, userID, from.Pos, to.Pos)
}
