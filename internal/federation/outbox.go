package federation

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/mxerr"
)

// Housekeeping defaults.
const (
	// DefaultInboundTxnRetention is how long the answer to an inbound
	// transaction is kept for replays: senders retry a transaction until it
	// is answered, so a replay after a day is not a retry any more.
	DefaultInboundTxnRetention = 24 * time.Hour
	// housekeepBatch bounds every delete of the housekeeping job.
	housekeepBatch = 5000
)

// HousekeeperConfig configures a Housekeeper.
type HousekeeperConfig struct {
	Store   Store
	Outbox  inbox.Store
	Metrics *Metrics
	Logger  *slog.Logger
	// MessageTTL drops outbox EDUs queued longer (DefaultMessageTTL).
	MessageTTL time.Duration
	// InboundTxnRetention (DefaultInboundTxnRetention).
	InboundTxnRetention time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Housekeeper bounds what federation keeps: it drops outbox EDUs older than
// the message TTL (whichever way they leave, sender or feed), prunes the
// inbound transaction record, and refreshes the outbox gauges.
type Housekeeper struct {
	cfg HousekeeperConfig
	log *slog.Logger
	m   *Metrics
}

// NewHousekeeper returns a Housekeeper.
func NewHousekeeper(cfg HousekeeperConfig) *Housekeeper {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.MessageTTL <= 0 {
		cfg.MessageTTL = DefaultMessageTTL
	}
	if cfg.InboundTxnRetention <= 0 {
		cfg.InboundTxnRetention = DefaultInboundTxnRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Housekeeper{cfg: cfg, log: cfg.Logger, m: cfg.Metrics}
}

// Housekeep expires old outbox EDUs and prunes old inbound transaction
// records, in bounded batches. Run it periodically.
func (h *Housekeeper) Housekeep(ctx context.Context) error {
	now := h.cfg.Now()
	for {
		counts, err := h.cfg.Outbox.ExpireOutbox(ctx, now.Add(-h.cfg.MessageTTL), housekeepBatch)
		if err != nil {
			return fmt.Errorf("expiring outbox EDUs: %w", err)
		}
		total := 0
		for _, c := range counts {
			total += c.Count
			h.log.WarnContext(ctx, "dropped outbound EDUs", "destination", c.Destination, "edus", c.Count,
				"reason", DropExpired, "ttl", h.cfg.MessageTTL.String())
		}
		h.m.EDUsDropped.WithLabelValues(DropExpired).Add(float64(total))
		if total < housekeepBatch {
			break
		}
	}
	for {
		n, err := h.cfg.Store.PruneInboundTxns(ctx, now.Add(-h.cfg.InboundTxnRetention), housekeepBatch)
		if err != nil {
			return fmt.Errorf("pruning inbound transaction records: %w", err)
		}
		if n < housekeepBatch {
			break
		}
	}
	return h.RefreshGauges(ctx)
}

// RefreshGauges updates the outbox depth, oldest age and backing-off gauges
// (a few cheap queries).
func (h *Housekeeper) RefreshGauges(ctx context.Context) error {
	b, err := h.cfg.Outbox.OutboxBacklog(ctx)
	if err != nil {
		return fmt.Errorf("reading outbox backlog: %w", err)
	}
	h.m.OutboxEDUs.Set(float64(b.Pending))
	if b.Oldest.IsZero() {
		h.m.OutboxOldestAge.Set(0)
	} else {
		h.m.OutboxOldestAge.Set(max(h.cfg.Now().Sub(b.Oldest).Seconds(), 0))
	}
	n, err := h.cfg.Store.BackingOff(ctx)
	if err != nil {
		return err
	}
	h.m.BackingOff.Set(float64(n))
	return nil
}

// Feed is the outbox as a homeserver's federation sender pulls it, when
// todeviced does not send itself (--federation-outbox=feed): the homeserver
// asks which destinations have EDUs, pulls a batch for one, puts the EDUs
// into its own transactions and, once the destination took them,
// acknowledges the batch, which deletes exactly those rows. A batch pulled
// again before its acknowledgement returns the same EDUs (at-least-once; the
// receiver deduplicates by message_id).
type Feed struct {
	outbox inbox.Store
	m      *Metrics
}

// NewFeed returns the feed of the to-device outbox.
func NewFeed(outbox inbox.Store, m *Metrics) *Feed {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Feed{outbox: outbox, m: m}
}

// FeedBatch is one pull.
type FeedBatch struct {
	EDUs []json.RawMessage
	// Token names exactly the rows handed out; empty when there are none.
	Token string
}

// Destinations lists the destinations with EDUs queued.
func (f *Feed) Destinations(ctx context.Context) ([]string, error) {
	return f.outbox.OutboxDestinations(ctx)
}

// Pull returns up to limit of the oldest EDUs queued for destination.
func (f *Feed) Pull(ctx context.Context, destination string, limit int) (FeedBatch, error) {
	if err := ValidateServerName(destination); err != nil {
		return FeedBatch{}, mxerr.New(mxerr.InvalidParam, "Invalid destination %q: %v.", destination, err)
	}
	if limit < 1 || limit > MaxEDUsPerTxn {
		limit = MaxEDUsPerTxn
	}
	q, err := f.outbox.PeekOutbox(ctx, destination, limit)
	if err != nil {
		return FeedBatch{}, fmt.Errorf("reading the outbox of %s: %w", destination, err)
	}
	out := FeedBatch{EDUs: make([]json.RawMessage, len(q))}
	pos := make([]int64, len(q))
	for i, e := range q {
		out.EDUs[i], pos[i] = e.EDU, e.Pos
	}
	if len(q) > 0 {
		out.Token = feedToken{epoch: f.outbox.Epoch(), destination: destination, source: inbox.OutboxSource, positions: pos}.String()
	}
	return out, nil
}

// Ack deletes exactly the rows a batch token names and returns how many it
// deleted (fewer when some were acknowledged or expired before). A token of
// another database epoch deletes nothing.
func (f *Feed) Ack(ctx context.Context, token string) (int, error) {
	t, err := parseFeedToken(token)
	if err != nil {
		return 0, mxerr.New(mxerr.InvalidParam, "Malformed batch token.")
	}
	if t.epoch != f.outbox.Epoch() || t.source != inbox.OutboxSource {
		return 0, nil
	}
	n, err := f.outbox.DeleteOutbox(ctx, t.destination, t.positions)
	if err != nil {
		return 0, fmt.Errorf("acknowledging outbox EDUs of %s: %w", t.destination, err)
	}
	f.m.EDUsSent.WithLabelValues(EDUDirectToDevice).Add(float64(n))
	return n, nil
}

// feedToken names the rows of one pull: the database epoch (positions of a
// recreated database mean other rows), the destination, the source and the
// positions. It is opaque to the homeserver.
type feedToken struct {
	epoch, destination, source string
	positions                  []int64
}

const feedTokenVersion = "f1"

func (t feedToken) String() string {
	var b strings.Builder
	b.WriteString(t.epoch)
	b.WriteByte('\n')
	b.WriteString(t.destination)
	b.WriteByte('\n')
	b.WriteString(t.source)
	b.WriteByte('\n')
	for i, p := range t.positions {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(p, 36))
	}
	return feedTokenVersion + "." + base64.RawURLEncoding.EncodeToString([]byte(b.String()))
}

func parseFeedToken(s string) (feedToken, error) {
	rest, ok := strings.CutPrefix(s, feedTokenVersion+".")
	if !ok {
		return feedToken{}, errors.New("unknown token version")
	}
	raw, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return feedToken{}, err
	}
	parts := strings.Split(string(raw), "\n")
	if len(parts) != 4 || parts[3] == "" {
		return feedToken{}, errors.New("malformed token")
	}
	t := feedToken{epoch: parts[0], destination: parts[1], source: parts[2]}
	for _, p := range strings.Split(parts[3], ",") {
		n, err := strconv.ParseInt(p, 36, 64)
		if err != nil {
			return feedToken{}, err
		}
		t.positions = append(t.positions, n)
	}
	if len(t.positions) > MaxEDUsPerTxn {
		return feedToken{}, errors.New("too many positions")
	}
	return t, nil
}
