// Package inbox is the per-device inbox of to-device messages: it accepts a
// sendToDevice (transaction dedupe, "*" expansion, local rows and remote outbox
// rows in one database transaction), hands pending messages out through sync
// (acknowledge with the next since, fetch at most a limit, in order), purges
// the inboxes of deleted devices and prunes what has expired.
package inbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Defaults of the inbox's housekeeping.
const (
	// DefaultSyncLimit is the spec's recommended number of to-device events
	// per sync response, and the most we hand out at once.
	DefaultSyncLimit = 100
	// DefaultTxnRetention is how long sendToDevice transaction ids are kept
	// for deduplication; the spec asks for retries to be recognised, and 24 h
	// covers every client retry loop we know of.
	DefaultTxnRetention = 24 * time.Hour
	// purgeBatch bounds each delete of a deleted device's inbox, so purging a
	// huge inbox never holds locks or bloats one transaction.
	purgeBatch = 1000
	// pruneBatch bounds each delete of old transaction records or messages.
	pruneBatch = 5000
	// DedupeRetention is how long the (origin, message_id) of an EDU from
	// another server is remembered. Senders retry a transaction for hours
	// or days; established servers keep these records about a week.
	DedupeRetention = 7 * 24 * time.Hour
)

// Config configures a Service.
type Config struct {
	ServerName string
	Store      Store
	Metrics    *Metrics
	Logger     *slog.Logger
	// TxnRetention is how long transaction records are kept (at least 24 h).
	TxnRetention time.Duration
	// MaxAge drops messages pending longer than this; 0 keeps them forever.
	MaxAge time.Duration
	// MaxMessages bounds each device's inbox (TrimInboxes); 0 is no bound.
	MaxMessages int
	// Now returns the current time (tests inject a clock).
	Now func() time.Time
	// DeviceExists, when set, lets sync drop key and secret requests whose
	// requesting (local) device no longer exists (MSC3944).
	DeviceExists DeviceExistsFunc
	// KeyRequestRate limits m.room_key_request to other users: messages
	// to one recipient user a second per sending device (local senders) or
	// per sending user (federation), KeyRequestBurst saved up; 0 turns the
	// limit off.
	KeyRequestRate  float64
	KeyRequestBurst int
}

// Service is the inbox.
type Service struct {
	cfg  Config
	log  *slog.Logger
	m    *Metrics
	keys keyLimits
}

// New returns an inbox service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.TxnRetention < DefaultTxnRetention {
		cfg.TxnRetention = DefaultTxnRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, keys: newKeyLimits(cfg)}
}

// Epoch is the database epoch that tokens carry.
func (s *Service) Epoch() string { return s.cfg.Store.Epoch() }

// Send accepts a sendToDevice request from the device txn names. It returns
// the response body: the recorded one when txn was seen before.
func (s *Service) Send(ctx context.Context, txn TxnKey, msgs Messages) ([]byte, error) {
	return s.SendGuarded(ctx, txn, nil, msgs)
}

// SendGuarded is Send for a device taken on trust: guard (if not nil) names
// the device's NID and the hash of the token the request carried, and the
// send is recorded only if that token still names that device, checked in
// the same transaction. Otherwise nothing is stored and it returns
// ErrTokenRevoked.
func (s *Service) SendGuarded(ctx context.Context, txn TxnKey, guard *SenderGuard, msgs Messages) ([]byte, error) {
	msgs, limited, taken := s.limitLocal(txn, msgs)
	a, err := BuildAccept(s.cfg.ServerName, txn, msgs)
	if err != nil {
		s.refundLocal(txn, taken)
		return nil, err
	}
	a.Guard = guard
	res, err := s.cfg.Store.Accept(ctx, a)
	if err != nil {
		s.refundLocal(txn, taken)
		return nil, fmt.Errorf("accepting sendToDevice: %w", err)
	}
	if res.Duplicate {
		// Answered from the first request, which paid: this one stored
		// nothing.
		s.refundLocal(txn, taken)
		s.m.Duplicates.Inc()
		return res.Response, nil
	}
	if limited > 0 {
		s.m.Dropped.WithLabelValues(DropKeyRequestRateLimited).Add(float64(limited))
		s.log.InfoContext(ctx, "dropped room key requests over the rate limit", "user_id", txn.UserID, "device_id", txn.DeviceID, "messages", limited)
	}
	s.m.Enqueued.WithLabelValues(OriginLocal).Add(float64(res.Delivered))
	s.m.Dropped.WithLabelValues(DropUnknownDevice).Add(float64(res.Unknown + a.Unaddressable))
	s.countStale(res.Dropped)
	for _, e := range a.Remote {
		s.m.Forwarded.Add(float64(e.Messages))
	}
	return res.Response, nil
}

// AcceptRemote stores m.direct_to_device EDUs from other servers in one
// database transaction, each unless its (origin, message_id) was seen before
// (then its result says Duplicate and nothing is stored for it). Build them
// with BuildRemoteAccept.
func (s *Service) AcceptRemote(ctx context.Context, batch []*RemoteAccept) ([]AcceptResult, error) {
	if len(batch) == 0 {
		return nil, nil
	}
	for _, r := range batch {
		if n := s.limitRemote(r); n > 0 {
			s.m.Dropped.WithLabelValues(DropKeyRequestRateLimited).Add(float64(n))
			s.log.InfoContext(ctx, "dropped room key requests over the rate limit", "origin", r.Origin, "sender", r.Sender, "messages", n)
		}
	}
	res, err := s.cfg.Store.AcceptRemote(ctx, batch)
	if err != nil {
		return nil, fmt.Errorf("accepting to-device EDUs from %s: %w", batch[0].Origin, err)
	}
	for i, r := range res {
		if r.Duplicate {
			continue
		}
		s.m.Enqueued.WithLabelValues(OriginFederation).Add(float64(r.Delivered))
		s.m.Dropped.WithLabelValues(DropUnknownDevice).Add(float64(r.Unknown + batch[i].Unaddressable))
		s.countStale(r.Dropped)
	}
	return res, nil
}

// Event is a to-device event as /sync hands it out.
type Event struct {
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// Batch is one sync's worth of a device's inbox.
type Batch struct {
	Events []Event
	// Next is the position to hand out as the next since.
	Next Position
	// Limited is true when more messages are pending: the next sync with
	// Next returns at once.
	Limited bool
}

// Sync acknowledges what since says was delivered and returns the oldest
// pending messages, at most limit (DefaultSyncLimit when limit <= 0 or larger).
// It returns ErrDeviceGone if the device was deleted.
func (s *Service) Sync(ctx context.Context, dev Recipient, since Position, limit int) (Batch, error) {
	b, _, err := s.sync(ctx, SyncQuery{Device: dev, Limit: limit}, since)
	return b, err
}

// CheckQuery is one check of a device's /sync (a long-poll makes one per
// wake-up).
type CheckQuery struct {
	Device Recipient
	// Since is acknowledged, then the messages above it are fetched.
	Since Position
	// Limit bounds the messages (DefaultSyncLimit when <= 0 or larger).
	Limit int
	// KeyCounts and TokenHash are SyncQuery's.
	KeyCounts bool
	TokenHash []byte
}

// Check is what one check of a /sync found.
type Check struct {
	Batch Batch
	// DeviceListHead is the device-list stream's head, read before the
	// messages.
	DeviceListHead int64
	// KeyCounts are the device's counts, when asked for.
	KeyCounts OneTimeKeyCounts
}

// SyncCheck is Sync with everything else a /sync check reads, in the same
// round trip: the head of the device-list stream, read before the messages,
// the device's key counts when asked for, and the guard of the access token
// (CheckQuery.TokenHash): when it fails, SyncCheck returns ErrTokenRevoked
// and did nothing.
func (s *Service) SyncCheck(ctx context.Context, q CheckQuery) (Check, error) {
	b, res, err := s.sync(ctx, SyncQuery{Device: q.Device, Limit: q.Limit, DeviceListHead: true, KeyCounts: q.KeyCounts, TokenHash: q.TokenHash}, q.Since)
	if err != nil {
		return Check{}, err
	}
	return Check{Batch: b, DeviceListHead: res.DeviceListHead, KeyCounts: res.KeyCounts}, nil
}

// sync runs q, acknowledging since, and turns the rows into a batch.
func (s *Service) sync(ctx context.Context, q SyncQuery, since Position) (Batch, SyncResult, error) {
	if q.Limit <= 0 || q.Limit > DefaultSyncLimit {
		q.Limit = DefaultSyncLimit
	}
	dev := q.Device
	if since.NID != dev.NID {
		since = Position{NID: dev.NID}
	}
	q.AckLo, q.AckHi = since.Lo, since.Hi
	res, err := s.cfg.Store.Sync(ctx, q)
	if err != nil {
		if errors.Is(err, ErrDeviceGone) || errors.Is(err, ErrTokenRevoked) {
			return Batch{}, SyncResult{}, err
		}
		if errors.Is(err, ErrNotIssued) {
			return Batch{}, SyncResult{}, matrix.Errorf(matrix.InvalidParam, "The since token's to-device position %d was never issued.", since.Hi)
		}
		return Batch{}, SyncResult{}, fmt.Errorf("syncing inbox: %w", err)
	}
	s.m.Acknowledged.Add(float64(res.Acked))
	b := Batch{Next: since.Acked(), Limited: res.More, Events: make([]Event, 0, len(res.Messages))}
	now := s.cfg.Now()
	drops := syncDropper{s: s, now: now}
	for _, msg := range res.Messages {
		reason, err := drops.drop(ctx, msg)
		if err != nil {
			return Batch{}, SyncResult{}, fmt.Errorf("checking requesting device: %w", err)
		}
		if reason != "" {
			// MSC3944, like an undeliverable row: left out, acknowledged
			// with the batch.
			s.m.Dropped.WithLabelValues(reason).Inc()
			continue
		}
		if err := checkStored(msg.Content); err != nil {
			// Stored before the door refused such content (DESIGN
			// invariant 13): it would fail the whole answer, every time,
			// and wedge the device. It is left out but stays inside the
			// batch's range, so the next since acknowledges it.
			s.m.Dropped.WithLabelValues(DropUndeliverable).Inc()
			s.log.WarnContext(ctx, "skipped an undeliverable to-device message", "user_id", dev.UserID,
				"device_nid", dev.NID, "pos", msg.Pos, "type", matrix.Quote(msg.Type), "err", err)
			continue
		}
		b.Events = append(b.Events, Event{Sender: msg.Sender, Type: msg.Type, Content: msg.Content})
		s.m.DeliveryDelay.Observe(max(now.Sub(msg.EnqueuedAt).Seconds(), 0))
	}
	if n := len(res.Messages); n > 0 {
		b.Next.Hi = res.Messages[n-1].Pos
		s.m.Delivered.Add(float64(len(b.Events)))
	}
	return b, res, nil
}

// PurgeDevice deletes every inbox row of a deleted device, in bounded batches.
func (s *Service) PurgeDevice(ctx context.Context, dev Recipient) error {
	var after int64
	total := 0
	for {
		n, last, err := s.cfg.Store.PurgeDevice(ctx, dev, after, purgeBatch)
		if err != nil {
			return fmt.Errorf("purging inbox of deleted device %d: %w", dev.NID, err)
		}
		total += n
		s.m.Dropped.WithLabelValues(DropDeviceDeleted).Add(float64(n))
		if n < purgeBatch {
			break
		}
		after = last
	}
	if total > 0 {
		s.log.InfoContext(ctx, "purged inbox of deleted device", "user_id", dev.UserID, "device_nid", dev.NID, "messages", total)
	}
	return nil
}

// Housekeep prunes transaction and inbound deduplication records past their
// retention, drops messages past the maximum age, and refreshes the backlog
// gauges. Run it periodically.
func (s *Service) Housekeep(ctx context.Context) error {
	now := s.cfg.Now()
	for {
		n, err := s.cfg.Store.PruneTxns(ctx, now.Add(-s.cfg.TxnRetention), pruneBatch)
		if err != nil {
			return fmt.Errorf("pruning transaction records: %w", err)
		}
		if n < pruneBatch {
			break
		}
	}
	for {
		n, err := s.cfg.Store.PruneInboundDedupe(ctx, now.Add(-DedupeRetention), pruneBatch)
		if err != nil {
			return fmt.Errorf("pruning inbound deduplication records: %w", err)
		}
		if n < pruneBatch {
			break
		}
	}
	if s.cfg.MaxAge > 0 {
		for {
			n, err := s.cfg.Store.ExpireMessages(ctx, now.Add(-s.cfg.MaxAge), pruneBatch)
			if err != nil {
				return fmt.Errorf("expiring old messages: %w", err)
			}
			if n > 0 {
				s.m.Dropped.WithLabelValues(DropExpired).Add(float64(n))
				s.log.WarnContext(ctx, "dropped messages older than the inbox maximum age", "messages", n, "max_age", s.cfg.MaxAge.String())
			}
			if n < pruneBatch {
				break
			}
		}
	}
	if _, err := s.TrimInboxes(ctx); err != nil {
		return err
	}
	return s.RefreshBacklog(ctx)
}

// RefreshBacklog updates the pending and oldest-age gauges.
func (s *Service) RefreshBacklog(ctx context.Context) error {
	b, err := s.cfg.Store.Backlog(ctx)
	if err != nil {
		return fmt.Errorf("reading inbox backlog: %w", err)
	}
	s.m.Pending.Set(float64(b.Pending))
	if b.Oldest.IsZero() {
		s.m.OldestAge.Set(0)
	} else {
		s.m.OldestAge.Set(max(s.cfg.Now().Sub(b.Oldest).Seconds(), 0))
	}
	return nil
}

// checkStored reports stored content that no answer can carry. Every
// version's door checked JSON syntax; what the encoder can still fail on
// (and what older doors let through) is depth. A value cannot nest deeper than
// it has '{' and '[' bytes, which bytes.Count finds at memory speed: the
// full scan runs only for the rare content with that many, not for every
// message of every sync.
func checkStored(content []byte) error {
	if bytes.Count(content, []byte{'{'})+bytes.Count(content, []byte{'['}) <= matrix.MaxDepth {
		return nil
	}
	return matrix.CheckJSON(content, matrix.MaxDepth)
}
