package federation

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
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
	Store Store
	// Outbox is the to-device outbox.
	Outbox Outbox
	// More are further outboxes (the device lists'), expired and measured
	// like Outbox.
	More    []Outbox
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

// outboxes are the to-device outbox and the others.
func (h *Housekeeper) outboxes() []Outbox {
	return append([]Outbox{h.cfg.Outbox}, h.cfg.More...)
}

// Housekeep expires old outbox EDUs and prunes old inbound transaction
// records, in bounded batches. Run it periodically.
func (h *Housekeeper) Housekeep(ctx context.Context) error {
	now := h.cfg.Now()
	for _, o := range h.outboxes() {
		for {
			counts, err := o.Expire(ctx, now.Add(-h.cfg.MessageTTL), housekeepBatch)
			if err != nil {
				return fmt.Errorf("expiring %s outbox EDUs: %w", o.Name(), err)
			}
			total := 0
			for _, c := range counts {
				total += c.Count
				h.log.WarnContext(ctx, "dropped outbound EDUs", "destination", c.Destination, "edus", c.Count,
					"reason", DropExpired, "ttl", h.cfg.MessageTTL.String(), "source", o.Name())
			}
			h.m.EDUsDropped.WithLabelValues(DropExpired).Add(float64(total))
			if total < housekeepBatch {
				break
			}
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
	var pending int64
	var oldest time.Time
	for _, o := range h.outboxes() {
		b, err := o.Backlog(ctx)
		if err != nil {
			return fmt.Errorf("reading %s outbox backlog: %w", o.Name(), err)
		}
		pending += b.Pending
		if !b.Oldest.IsZero() && (oldest.IsZero() || b.Oldest.Before(oldest)) {
			oldest = b.Oldest
		}
	}
	h.m.OutboxEDUs.Set(float64(pending))
	if oldest.IsZero() {
		h.m.OutboxOldestAge.Set(0)
	} else {
		h.m.OutboxOldestAge.Set(max(h.cfg.Now().Sub(oldest).Seconds(), 0))
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
// receiver deduplicates by message_id, and device-list updates are
// idempotent). A batch mixes the outboxes (to-device, device lists) by the
// same quotas as the sender's transactions, so a to-device backlog cannot
// starve device-list updates here either.
type Feed struct {
	epoch   string
	sources []SourceQuota
	byName  map[string]Outbox
	m       *Metrics
}

// NewFeed returns the feed of the outboxes; every source must be an
// Outbox. epoch is the database epoch (positions of a recreated database
// name other rows).
func NewFeed(epoch string, sources []SourceQuota, m *Metrics) (*Feed, error) {
	if m == nil {
		m = NewMetrics(nil)
	}
	f := &Feed{epoch: epoch, sources: sources, byName: map[string]Outbox{}, m: m}
	for _, s := range sources {
		o, ok := s.Source.(Outbox)
		if !ok {
			return nil, fmt.Errorf("the feed cannot acknowledge EDUs of source %q", s.Source.Name())
		}
		f.byName[o.Name()] = o
	}
	return f, nil
}

// FeedBatch is one pull.
type FeedBatch struct {
	EDUs []json.RawMessage
	// Token names exactly the rows handed out; empty when there are none.
	Token string
}

// Destinations lists the destinations with EDUs queued in any outbox.
func (f *Feed) Destinations(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, s := range f.sources {
		dests, err := s.Source.Destinations(ctx)
		if err != nil {
			return nil, err
		}
		for _, d := range dests {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Pull returns up to limit of the oldest EDUs queued for destination.
func (f *Feed) Pull(ctx context.Context, destination string, limit int) (FeedBatch, error) {
	if err := matrix.ValidateServerName(destination); err != nil {
		return FeedBatch{}, matrix.Errorf(matrix.InvalidParam, "Invalid destination %q: %v.", matrix.Quote(destination), err)
	}
	if limit < 1 || limit > MaxEDUsPerTxn {
		limit = MaxEDUsPerTxn
	}
	batch, err := buildBatch(ctx, destination, f.sources, limit, nil, 0)
	if err != nil {
		return FeedBatch{}, fmt.Errorf("reading the outbox of %s: %w", destination, err)
	}
	out := FeedBatch{EDUs: make([]json.RawMessage, len(batch))}
	tok := feedToken{epoch: f.epoch, destination: destination}
	for i, e := range batch {
		out.EDUs[i] = e.EDU
		if n := len(tok.sources); n == 0 || tok.sources[n-1].source != e.source {
			tok.sources = append(tok.sources, feedSource{source: e.source})
		}
		last := &tok.sources[len(tok.sources)-1]
		last.positions = append(last.positions, e.Pos)
	}
	if len(batch) > 0 {
		out.Token = tok.String()
	}
	return out, nil
}

// Ack deletes exactly the rows a batch token names and returns how many it
// deleted (fewer when some were acknowledged or expired before). A token of
// another database epoch deletes nothing.
func (f *Feed) Ack(ctx context.Context, token string) (int, error) {
	t, err := parseFeedToken(token)
	if err != nil {
		return 0, matrix.Errorf(matrix.InvalidParam, "Malformed batch token.")
	}
	if t.epoch != f.epoch {
		return 0, nil
	}
	total := 0
	for _, s := range t.sources {
		o := f.byName[s.source]
		if o == nil {
			continue // not an outbox of this feed: nothing of ours
		}
		byType, err := o.Delete(ctx, t.destination, s.positions)
		if err != nil {
			return total, fmt.Errorf("acknowledging %s outbox EDUs of %s: %w", s.source, t.destination, err)
		}
		for typ, n := range byType {
			f.m.EDUsSent.WithLabelValues(eduTypeLabel(typ)).Add(float64(n))
			total += n
		}
	}
	return total, nil
}

// feedToken names the rows of one pull: the database epoch (positions of a
// recreated database mean other rows), the destination and the positions
// by source. It is opaque to the homeserver.
type feedToken struct {
	epoch, destination string
	sources            []feedSource
}

type feedSource struct {
	source    string
	positions []int64
}

// Token versions: f1 named one source, f2 any number (f1 tokens handed out
// before an upgrade are still acknowledged).
const (
	feedTokenV1 = "f1"
	feedTokenV2 = "f2"
)

func (t feedToken) String() string {
	var b strings.Builder
	b.WriteString(t.epoch)
	b.WriteByte('\n')
	b.WriteString(t.destination)
	b.WriteByte('\n')
	for i, s := range t.sources {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(s.source)
		b.WriteByte('=')
		for j, p := range s.positions {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(p, 36))
		}
	}
	return feedTokenV2 + "." + base64.RawURLEncoding.EncodeToString([]byte(b.String()))
}

func parseFeedToken(s string) (feedToken, error) {
	version, rest, ok := strings.Cut(s, ".")
	if !ok || (version != feedTokenV1 && version != feedTokenV2) {
		return feedToken{}, errors.New("unknown token version")
	}
	raw, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return feedToken{}, err
	}
	parts := strings.Split(string(raw), "\n")
	var t feedToken
	var groups []string
	switch {
	case version == feedTokenV1 && len(parts) == 4 && parts[3] != "":
		t = feedToken{epoch: parts[0], destination: parts[1]}
		groups = []string{parts[2] + "=" + parts[3]}
	case version == feedTokenV2 && len(parts) == 3 && parts[2] != "":
		t = feedToken{epoch: parts[0], destination: parts[1]}
		groups = strings.Split(parts[2], ";")
	default:
		return feedToken{}, errors.New("malformed token")
	}
	total := 0
	for _, g := range groups {
		name, list, ok := strings.Cut(g, "=")
		if !ok || name == "" || list == "" {
			return feedToken{}, errors.New("malformed token")
		}
		fs := feedSource{source: name}
		for _, p := range strings.Split(list, ",") {
			n, err := strconv.ParseInt(p, 36, 64)
			if err != nil {
				return feedToken{}, err
			}
			fs.positions = append(fs.positions, n)
		}
		total += len(fs.positions)
		t.sources = append(t.sources, fs)
	}
	if total > MaxEDUsPerTxn {
		return feedToken{}, errors.New("too many positions")
	}
	return t, nil
}
