package federation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Defaults of SenderConfig.
const (
	// DefaultLeaseTTL is how long a sender's lease on a destination lasts
	// unless renewed (every third of it). A replica that dies holds its
	// destinations for at most this long.
	DefaultLeaseTTL = 30 * time.Second
	// DefaultSweepInterval is how often the sender looks for destinations
	// with queued EDUs on its own: wake-ups are hints, and the sweep finds
	// what they missed, destinations whose backoff ended, and work a crashed
	// replica left behind.
	DefaultSweepInterval = 30 * time.Second
	// DefaultSendTimeout bounds one attempt to send a transaction.
	DefaultSendTimeout = 60 * time.Second
	// DefaultMessageTTL is how long an EDU may wait for its destination
	// before it is dropped (reason "expired").
	DefaultMessageTTL = 7 * 24 * time.Hour
)

// minRetryWait is the least a sender waits before asking for a lease again,
// so a refusal that names no wait (the lease was just released) cannot turn
// into a tight loop.
const minRetryWait = 50 * time.Millisecond

// sendPath is where transactions go.
const sendPath = "/_matrix/federation/v1/send/"

// SenderConfig configures a Sender.
type SenderConfig struct {
	// ServerName is our server name, the transactions' origin.
	ServerName string
	Store      Store
	// Sources are drained in this order; each gets up to its quota of every
	// transaction first.
	Sources []SourceQuota
	// Client sends the signed requests (a *matrixfed.Client).
	Client matrixfed.Requester
	// Hub tells the sender when EDUs are queued (wakeup.OutboxKey); nil
	// leaves it to the sweep.
	Hub     *wakeup.Hub
	Metrics *Metrics
	Logger  *slog.Logger
	// Holder names this sender in leases; a random id when empty. It must
	// differ between processes.
	Holder        string
	LeaseTTL      time.Duration
	Backoff       matrixfed.Backoff
	MessageTTL    time.Duration
	SweepInterval time.Duration
	SendTimeout   time.Duration
	// Now gives origin_server_ts of new transactions; time.Now when nil.
	Now func() time.Time
}

// Sender drains the outboxes to their destinations: one goroutine per
// destination with work, one sender per destination across all replicas
// (a lease judged by the database clock), transactions stored before their
// first attempt and resent unchanged until the destination answers 200.
// A destination that fails backs off (persisted), and neither new EDUs nor
// other destinations wait for it.
type Sender struct {
	cfg    SenderConfig
	log    *slog.Logger
	m      *Metrics
	ids    *txnIDs
	holder string
	wg     sync.WaitGroup
	kick   chan struct{}

	mu       sync.Mutex
	dests    map[string]*destState
	splits   map[string]*splitState
	pending  map[string]struct{}
	sweepAll bool
	stopped  bool
}

// destState is what this process knows about one destination.
type destState struct {
	running bool
	// poked: EDUs were queued while the sender was running; it looks once
	// more before it stops.
	poked bool
	// notBefore: wake-ups before this are ignored (backoff, or another
	// replica's lease); timer starts the sender again then.
	notBefore time.Time
	timer     *time.Timer
}

// NewSender returns a sender; Run starts it.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if err := matrix.ValidateServerName(cfg.ServerName); err != nil {
		return nil, fmt.Errorf("creating federation sender: %w", err)
	}
	if cfg.Store == nil || cfg.Client == nil || len(cfg.Sources) == 0 {
		return nil, errors.New("creating federation sender: store, client and sources are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	cfg.Backoff = cfg.Backoff.WithDefaults()
	if cfg.MessageTTL <= 0 {
		cfg.MessageTTL = DefaultMessageTTL
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = DefaultSendTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	holder := cfg.Holder
	if holder == "" {
		holder = newHolderID()
	}
	return &Sender{
		cfg: cfg, log: cfg.Logger, m: cfg.Metrics, ids: newTxnIDs(), holder: holder,
		kick: make(chan struct{}, 1), dests: map[string]*destState{}, pending: map[string]struct{}{},
		splits: map[string]*splitState{},
	}, nil
}

// newHolderID names this process in leases: the host name for operators,
// and random bits, since a restarted process must not pass for its old self.
func newHolderID() string {
	host, _ := os.Hostname()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return host + "/" + hex.EncodeToString(b[:])
}

// Holder is the id this sender holds leases under.
func (s *Sender) Holder() string { return s.holder }

// Run sends until ctx ends, then waits for the destinations' senders to
// stop and release their leases.
func (s *Sender) Run(ctx context.Context) {
	if s.cfg.Hub != nil {
		stop := s.cfg.Hub.Observe(s.observe)
		defer stop()
	}
	sweep := time.NewTicker(s.cfg.SweepInterval)
	defer sweep.Stop()
	s.sweep(ctx)
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.stopped = true
			for _, st := range s.dests {
				if st.timer != nil {
					st.timer.Stop()
				}
			}
			s.mu.Unlock()
			s.wg.Wait()
			return
		case <-sweep.C:
			s.sweep(ctx)
		case <-s.kick:
			s.mu.Lock()
			pending, all := s.pending, s.sweepAll
			s.pending, s.sweepAll = map[string]struct{}{}, false
			for d := range pending {
				s.startLocked(ctx, d, true)
			}
			s.mu.Unlock()
			if all {
				s.sweep(ctx)
			}
		}
	}
}

// observe hears every wake-up of the hub (with the hub locked: no blocking).
func (s *Sender) observe(keys []wakeup.Key) {
	added := false
	s.mu.Lock()
	if keys == nil {
		s.sweepAll, added = true, true
	}
	for _, k := range keys {
		if d, ok := wakeup.OutboxDestination(k); ok {
			s.pending[d] = struct{}{}
			added = true
		}
	}
	s.mu.Unlock()
	if added {
		s.signal()
	}
}

func (s *Sender) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// sweep starts a sender for every destination with queued EDUs or a stored
// transaction that is not running or waiting here.
func (s *Sender) sweep(ctx context.Context) {
	seen := map[string]bool{}
	var dests []string
	add := func(list []string) {
		for _, d := range list {
			if !seen[d] {
				seen[d] = true
				dests = append(dests, d)
			}
		}
	}
	for _, src := range s.cfg.Sources {
		list, err := src.Source.Destinations(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.ErrorContext(ctx, "federation sweep: listing destinations failed", "source", src.Source.Name(), "err", err)
			}
			return
		}
		add(list)
	}
	list, err := s.cfg.Store.TxnDestinations(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.ErrorContext(ctx, "federation sweep: listing stored transactions failed", "err", err)
		}
		return
	}
	add(list)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range dests {
		s.startLocked(ctx, d, false)
	}
}

// startLocked starts the destination's sender unless it runs (then a poke
// makes it look once more) or must wait.
func (s *Sender) startLocked(ctx context.Context, d string, poke bool) {
	if s.stopped || ctx.Err() != nil {
		return
	}
	st := s.dests[d]
	if st == nil {
		st = &destState{}
		s.dests[d] = st
	}
	if st.running {
		st.poked = st.poked || poke
		return
	}
	if time.Now().Before(st.notBefore) {
		// Backing off, or another replica sends: not early. The store
		// would refuse the lease anyway; this saves it the question.
		return
	}
	st.running = true
	s.wg.Add(1)
	go s.runDestination(ctx, d)
}

func (s *Sender) runDestination(ctx context.Context, d string) {
	defer s.wg.Done()
	for {
		wait := s.drain(ctx, d)
		s.mu.Lock()
		st := s.dests[d]
		if wait == 0 && st.poked && ctx.Err() == nil {
			st.poked = false
			s.mu.Unlock()
			continue
		}
		st.running, st.poked = false, false
		if wait > 0 && !s.stopped {
			st.notBefore = time.Now().Add(wait)
			if st.timer != nil {
				st.timer.Stop()
			}
			st.timer = time.AfterFunc(wait, func() { s.retry(d) })
		} else if st.timer == nil {
			delete(s.dests, d)
		}
		s.mu.Unlock()
		return
	}
}

// retry runs when a destination's wait is over.
func (s *Sender) retry(d string) {
	s.mu.Lock()
	if st := s.dests[d]; st != nil {
		st.timer = nil
	}
	s.pending[d] = struct{}{}
	s.mu.Unlock()
	s.signal()
}

// drain sends the destination's queued EDUs while it holds the lease, until
// none are left (it returns 0) or an attempt fails (it returns the backoff:
// nothing starts for the destination before then).
func (s *Sender) drain(ctx context.Context, d string) time.Duration {
	acq, err := s.cfg.Store.AcquireLease(ctx, d, s.holder, s.cfg.LeaseTTL)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		s.log.ErrorContext(ctx, "acquiring federation sender lease failed", "destination", d, "err", err)
		return s.cfg.Backoff.Min
	}
	if !acq.Acquired {
		return max(acq.Wait, minRetryWait)
	}
	l := acq.Lease
	lctx, cancel := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go s.renew(lctx, cancel, l, renewed)
	defer func() {
		cancel()
		<-renewed
		rctx, done := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer done()
		if err := s.cfg.Store.ReleaseLease(rctx, l); err != nil {
			s.log.WarnContext(ctx, "releasing federation sender lease failed", "destination", d, "err", err)
		}
	}()

	failures := acq.Failures
	sp := s.splitFor(d)
	defer s.forgetSplit(d, sp)
	for lctx.Err() == nil {
		t, types, err := s.nextTxn(lctx, l, sp)
		if err != nil {
			if lctx.Err() != nil || errors.Is(err, ErrLeaseLost) {
				return 0
			}
			s.log.ErrorContext(ctx, "preparing federation transaction failed", "destination", d, "err", err)
			return s.cfg.Backoff.Min
		}
		if t == nil {
			return 0
		}
		if t.Age > s.cfg.MessageTTL {
			s.drop(lctx, l, t, types, DropExpired)
			continue
		}
		wait, ok := s.attempt(lctx, l, t, types, &failures, sp)
		if !ok {
			return wait
		}
	}
	return 0
}

// renew keeps the lease alive while the destination is being sent to; if
// it is lost, the sender stops (its writes are fenced anyway).
func (s *Sender) renew(ctx context.Context, cancel context.CancelFunc, l Lease, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := s.cfg.Store.RenewLease(ctx, l, s.cfg.LeaseTTL)
		if errors.Is(err, ErrLeaseLost) {
			s.log.WarnContext(ctx, "federation sender lease lost", "destination", l.Destination)
			cancel()
			return
		}
		if err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "renewing federation sender lease failed", "destination", l.Destination, "err", err)
		}
	}
}

// nextTxn returns the stored transaction, or stores a new one from the
// sources, or nil when nothing is queued. types counts its EDUs by type.
// While a split is being worked through, new transactions are at most
// sp.room() EDUs, EDUs set aside are left out, and once the destination has
// taken a transaction, the oldest EDU set aside is sent alone (see split.go).
func (s *Sender) nextTxn(ctx context.Context, l Lease, sp *splitState) (*StoredTxn, map[string]int, error) {
	for ctx.Err() == nil {
		t, err := s.cfg.Store.StoredTxn(ctx, l.Destination)
		if err != nil {
			return nil, nil, err
		}
		if t != nil {
			return t, eduTypes(t.EDUs), nil
		}
		room, confirming := sp.room(), false
		var keep func(TxnItem) bool
		if sp.confirm && len(sp.aside) > 0 {
			first := sp.aside[0].item
			room, keep, confirming = 1, func(it TxnItem) bool { return it == first }, true
		}
		t, types, bad, err := s.composeTxn(ctx, l, room, sp, keep)
		if err != nil {
			return nil, nil, err
		}
		if len(bad) > 0 {
			if err := s.dropUnsignable(ctx, l, bad); err != nil {
				return nil, nil, err
			}
			continue
		}
		if t == nil {
			if confirming {
				// Gone meanwhile (expired): nothing left to confirm.
				sp.aside = sp.aside[1:]
				sp.confirm = len(sp.aside) > 0
				continue
			}
			return nil, nil, nil
		}
		err = s.cfg.Store.SaveTxn(ctx, l, t)
		if errors.Is(err, ErrTxnExists) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if confirming {
			sp.confirmID = t.ID
		}
		return t, types, nil
	}
	return nil, nil, ctx.Err()
}

// dropUnsignable drops outbox EDUs that cannot be sent, through a stored
// transaction that covers them and is never sent, so the rows go the one
// fenced way every finished transaction's rows go.
func (s *Sender) dropUnsignable(ctx context.Context, l Lease, bad []TxnItem) error {
	t := &StoredTxn{Destination: l.Destination, ID: s.ids.next(), EDUs: json.RawMessage("[]"),
		OriginServerTS: s.cfg.Now().UnixMilli(), Items: bad}
	if err := s.cfg.Store.SaveTxn(ctx, l, t); err != nil {
		return err
	}
	if _, err := s.cfg.Store.DropTxn(ctx, l, t.ID); err != nil {
		return err
	}
	s.m.EDUsDropped.WithLabelValues(DropMalformed).Add(float64(len(bad)))
	s.log.WarnContext(ctx, "dropped outbound EDUs", "destination", l.Destination, "edus", len(bad), "reason", DropMalformed)
	return nil
}

// attempt sends the transaction once. ok is true when the destination took
// it; otherwise wait is the backoff.
func (s *Sender) attempt(ctx context.Context, l Lease, t *StoredTxn, types map[string]int, failures *int, sp *splitState) (wait time.Duration, ok bool) {
	body := transactionBody(s.cfg.ServerName, t)
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.SendTimeout)
	err := s.cfg.Client.Do(rctx, l.Destination, http.MethodPut, sendPath+url.PathEscape(t.ID), nil, json.RawMessage(body), nil)
	cancel()
	s.m.SendDuration.Observe(time.Since(start).Seconds())

	if err == nil || errors.Is(err, matrixfed.ErrBadResponse) {
		// A 2xx is the destination's receipt, whatever the body says.
		s.m.Transactions.WithLabelValues(ResultOK).Inc()
		if _, err := s.cfg.Store.CompleteTxn(ctx, l, t.ID); err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrLeaseLost) {
				return 0, false
			}
			// The transaction stays stored and is sent again later; the
			// destination answers the replay from its record.
			s.log.ErrorContext(ctx, "finishing federation transaction failed", "destination", l.Destination, "txn_id", t.ID, "err", err)
			return s.cfg.Backoff.Min, false
		}
		for typ, n := range types {
			s.m.EDUsSent.WithLabelValues(eduTypeLabel(typ)).Add(float64(n))
		}
		*failures = 0
		sp.base = 0
		sp.succeeded(t.ID)
		return 0, true
	}
	if ctx.Err() != nil {
		return 0, false // stopping, or the lease was lost: not the destination's fault
	}

	result, status := ResultRetry, 0
	var retryAfter time.Duration
	var he *matrixfed.HTTPError
	if errors.As(err, &he) {
		status = he.Status
		switch {
		case he.Status == http.StatusTooManyRequests:
			result, retryAfter = ResultRateLimited, he.RetryAfter
		case countsAsRejection(he.Status):
			result = ResultRejected
		}
	}
	s.m.Transactions.WithLabelValues(result).Inc()
	*failures++
	// The exponent counts failures since the transaction last changed
	// (a split restarts it; see split.go).
	wait = s.cfg.Backoff.Delay(max(*failures-sp.base, 1))
	// The streak RecordFailure will count (the store's rule), known now so
	// that a transaction about to be split or given up is not also made
	// to wait its full backoff.
	same := 0
	if status != 0 {
		same = 1
		if t.LastStatus == status {
			same = t.SameStatus + 1
		}
	}
	if sp.replaces(t, types, status, same) {
		wait = s.cfg.Backoff.Delay(1)
	}
	if retryAfter > 0 {
		wait = retryAfter
	}
	same, rerr := s.cfg.Store.RecordFailure(ctx, l, FailedAttempt{TxnID: t.ID, Status: status, Wait: wait})
	if rerr != nil {
		if !errors.Is(rerr, ErrLeaseLost) && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "recording federation failure failed", "destination", l.Destination, "err", rerr)
		}
		return wait, false
	}
	s.log.WarnContext(ctx, "sending federation transaction failed", "destination", l.Destination, "txn_id", t.ID,
		"status", status, "failures", *failures, "retry_in", wait.String(), "err", err)
	if s.afterFailure(ctx, l, t, types, status, same, *failures, sp) {
		return 0, true
	}
	if countsAsRejection(status) && same >= RejectAfter {
		s.drop(ctx, l, t, types, DropRejected)
	}
	return wait, false
}

// drop gives a stored transaction up, logging and counting its EDUs.
func (s *Sender) drop(ctx context.Context, l Lease, t *StoredTxn, types map[string]int, reason string) {
	if _, err := s.cfg.Store.DropTxn(ctx, l, t.ID); err != nil {
		if ctx.Err() == nil && !errors.Is(err, ErrLeaseLost) {
			s.log.ErrorContext(ctx, "dropping federation transaction failed", "destination", l.Destination, "txn_id", t.ID, "err", err)
		}
		return
	}
	n := 0
	for _, c := range types {
		n += c
	}
	s.m.EDUsDropped.WithLabelValues(reason).Add(float64(n))
	s.log.WarnContext(ctx, "dropped outbound EDUs", "destination", l.Destination, "edus", n, "reason", reason, "txn_id", t.ID)
}

// eduTypes counts the EDUs of a stored list by type.
func eduTypes(edus json.RawMessage) map[string]int {
	var list []struct {
		Type string `json:"edu_type"`
	}
	out := map[string]int{}
	if err := json.Unmarshal(edus, &list); err != nil {
		return out
	}
	for _, e := range list {
		out[e.Type]++
	}
	return out
}
