package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// The sender's timing is tested in a synctest bubble against an in-memory
// store: time is fake, so waits are exact and cost nothing. What the store
// itself guarantees (leases, fencing, exact deletes) is tested against the
// real databases in the conformance suite.

// memSource is an EDU outbox in memory.
type memSource struct {
	mu   sync.Mutex
	next int64
	edus map[string][]SourceEDU
}

func (s *memSource) Name() string { return "mem" }

func (s *memSource) add(dest string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.edus == nil {
		s.edus = map[string][]SourceEDU{}
	}
	s.next++
	s.edus[dest] = append(s.edus[dest], SourceEDU{Pos: s.next, Type: matrix.EDUDirectToDevice,
		EDU: json.RawMessage(fmt.Sprintf(`{"content":{"n":%d},"edu_type":"m.direct_to_device"}`, n))})
}

func (s *memSource) Peek(_ context.Context, dest string, limit int) ([]SourceEDU, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.edus[dest]
	return slices.Clone(q[:min(limit, len(q))]), nil
}

func (s *memSource) Destinations(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for d, q := range s.edus {
		if len(q) > 0 {
			out = append(out, d)
		}
	}
	return out, nil
}

func (s *memSource) delete(dest string, items []TxnItem) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	s.edus[dest] = slices.DeleteFunc(s.edus[dest], func(e SourceEDU) bool {
		if slices.ContainsFunc(items, func(it TxnItem) bool { return it.Pos == e.Pos }) {
			n++
			return true
		}
		return false
	})
	return n
}

func (s *memSource) queued(dest string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.edus[dest])
}

// memStore is a Store in memory, its clock the bubble's.
type memStore struct {
	src *memSource

	mu       sync.Mutex
	dests    map[string]*memDest
	txns     map[string]*memTxn
	acquires int
}

func (m *memStore) acquireCalls() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.acquires
}

type memDest struct {
	failures   int
	retryAt    time.Time
	holder     string
	generation int64
	until      time.Time
}

type memTxn struct {
	StoredTxn
	created time.Time
}

func newMemStore(src *memSource) *memStore {
	return &memStore{src: src, dests: map[string]*memDest{}, txns: map[string]*memTxn{}}
}

func (m *memStore) dest(d string) *memDest {
	if m.dests[d] == nil {
		m.dests[d] = &memDest{}
	}
	return m.dests[d]
}

func (m *memStore) holds(l Lease) bool {
	d := m.dests[l.Destination]
	return d != nil && d.holder == l.Holder && d.generation == l.Generation
}

func (m *memStore) AcquireLease(_ context.Context, destination, holder string, ttl time.Duration) (Acquisition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acquires++
	now := time.Now()
	d := m.dest(destination)
	a := Acquisition{Lease: Lease{Destination: destination, Holder: holder}, Failures: d.failures}
	var leaseWait time.Duration
	if d.holder != "" {
		leaseWait = d.until.Sub(now)
	}
	retryWait := d.retryAt.Sub(now)
	if leaseWait > 0 || retryWait > 0 {
		a.Wait, a.BackingOff = max(leaseWait, retryWait), retryWait > 0
		return a, nil
	}
	d.holder, d.generation, d.until = holder, d.generation+1, now.Add(ttl)
	a.Acquired, a.Lease.Generation = true, d.generation
	return a, nil
}

func (m *memStore) RenewLease(_ context.Context, l Lease, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.holds(l) {
		return ErrLeaseLost
	}
	m.dests[l.Destination].until = time.Now().Add(ttl)
	return nil
}

func (m *memStore) ReleaseLease(_ context.Context, l Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holds(l) {
		d := m.dests[l.Destination]
		d.holder, d.until = "", time.Time{}
	}
	return nil
}

func (m *memStore) StoredTxn(_ context.Context, destination string) (*StoredTxn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.txns[destination]
	if t == nil {
		return nil, nil
	}
	c := t.StoredTxn
	c.Age = time.Since(t.created)
	return &c, nil
}

func (m *memStore) SaveTxn(_ context.Context, l Lease, t *StoredTxn) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.holds(l) {
		return ErrLeaseLost
	}
	if m.txns[l.Destination] != nil {
		return ErrTxnExists
	}
	m.txns[l.Destination] = &memTxn{StoredTxn: *t, created: time.Now()}
	return nil
}

func (m *memStore) finish(l Lease, txnID string, ok bool) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.holds(l) {
		return 0, ErrLeaseLost
	}
	t := m.txns[l.Destination]
	if t == nil || t.ID != txnID {
		return 0, ErrNoTxn
	}
	delete(m.txns, l.Destination)
	if ok {
		d := m.dests[l.Destination]
		d.failures, d.retryAt = 0, time.Time{}
	}
	return m.src.delete(l.Destination, t.Items), nil
}

func (m *memStore) ReplaceTxn(_ context.Context, l Lease, txnID string, t *StoredTxn) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.holds(l) {
		return ErrLeaseLost
	}
	old := m.txns[l.Destination]
	if old == nil || old.ID != txnID {
		return ErrNoTxn
	}
	if t == nil {
		delete(m.txns, l.Destination)
		return nil
	}
	m.txns[l.Destination] = &memTxn{StoredTxn: *t, created: old.created}
	return nil
}

func (m *memStore) CompleteTxn(_ context.Context, l Lease, txnID string) (int, error) {
	return m.finish(l, txnID, true)
}

func (m *memStore) DropTxn(_ context.Context, l Lease, txnID string) (int, error) {
	return m.finish(l, txnID, false)
}

func (m *memStore) RecordFailure(_ context.Context, l Lease, f FailedAttempt) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.holds(l) {
		return 0, ErrLeaseLost
	}
	t := m.txns[l.Destination]
	if t == nil || t.ID != f.TxnID {
		return 0, ErrNoTxn
	}
	d := m.dests[l.Destination]
	d.failures++
	d.retryAt = time.Now().Add(f.Wait)
	t.Attempts++
	switch {
	case f.Status == 0:
		t.SameStatus = 0
	case t.LastStatus == f.Status:
		t.SameStatus++
	default:
		t.SameStatus = 1
	}
	t.LastStatus = f.Status
	return t.SameStatus, nil
}

func (m *memStore) TxnDestinations(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for d := range m.txns {
		out = append(out, d)
	}
	return out, nil
}

func (m *memStore) BackingOff(context.Context) (int, error) { return 0, nil }
func (m *memStore) InboundTxn(context.Context, string, string) ([]byte, bool, error) {
	return nil, false, nil
}
func (m *memStore) RecordInboundTxn(context.Context, string, string, []byte) error { return nil }
func (m *memStore) PruneInboundTxns(context.Context, time.Time, int) (int, error)  { return 0, nil }

// attempt is one request the fake client got.
type attempt struct {
	at          time.Time
	destination string
	txnID       string
	body        string
}

// fakeClient answers sends with answer(i), i counting from 0.
type fakeClient struct {
	answer func(i int) error
	// byBody, when set, answers instead of answer, seeing the body.
	byBody func(body string) error

	mu       sync.Mutex
	attempts []attempt
}

func (c *fakeClient) Do(_ context.Context, destination, method, path string, _ url.Values, body, _ any) error {
	c.mu.Lock()
	i := len(c.attempts)
	id, _ := url.PathUnescape(path[len(sendPath):])
	c.attempts = append(c.attempts, attempt{at: time.Now(), destination: destination, txnID: id, body: string(body.(json.RawMessage))})
	c.mu.Unlock()
	if method != http.MethodPut {
		panic("unexpected " + method)
	}
	if c.byBody != nil {
		return c.byBody(string(body.(json.RawMessage)))
	}
	return c.answer(i)
}

func (c *fakeClient) list() []attempt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.attempts)
}

// harness runs a sender in the bubble.
type harness struct {
	t      *testing.T
	src    *memSource
	store  *memStore
	client *fakeClient
	hub    *wakeup.Hub
	m      *Metrics
	cancel context.CancelFunc
	done   chan struct{}
}

// maxJitter makes every backoff its ceiling.
func maxJitter(n int64) int64 { return n - 1 }

func newHarness(t *testing.T, answer func(i int) error, tweak func(*SenderConfig)) *harness {
	h := &harness{t: t, src: &memSource{}, client: &fakeClient{answer: answer}, hub: wakeup.NewHub(), m: NewMetrics(nil)}
	h.store = newMemStore(h.src)
	cfg := SenderConfig{
		ServerName: "a.test", Store: h.store, Sources: []SourceQuota{{Source: h.src, Quota: ToDeviceQuota}},
		Client: h.client, Hub: h.hub, Metrics: h.m,
		Backoff: matrixfed.Backoff{Min: time.Second, Max: time.Minute, Rand: maxJitter},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := NewSender(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		s.Run(ctx)
	}()
	synctest.Wait()
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

// queue adds an EDU for dest and wakes the sender, as a commit does.
func (h *harness) queue(dest string, n int) {
	h.src.add(dest, n)
	h.hub.Wake(wakeup.OutboxKey(dest))
}

func status(code int) error { return fmt.Errorf("sending: %w", &matrixfed.HTTPError{Status: code}) }

func TestSenderBacksOffAndIsNotHurriedByNewMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(i int) error {
			if i < 3 {
				return status(http.StatusServiceUnavailable)
			}
			return nil
		}, nil)
		defer h.stop()
		start := time.Now()
		h.queue("b.test", 1)
		synctest.Wait()
		require.Len(t, h.client.list(), 1)

		// New messages during the backoff do not bring the next attempt
		// forward, nor cost a trip to the database.
		acquires := h.store.acquireCalls()
		for i := range 5 {
			time.Sleep(100 * time.Millisecond)
			h.queue("b.test", 10+i)
			synctest.Wait()
		}
		require.Len(t, h.client.list(), 1, "a destination backing off is not retried early")
		require.Equal(t, acquires, h.store.acquireCalls(), "wake-ups during the backoff are ignored")

		time.Sleep(10 * time.Second)
		synctest.Wait()
		got := h.client.list()
		require.Len(t, got, 5, "three failures, then the stored transaction, then the rest")
		var offsets []time.Duration
		for _, a := range got {
			offsets = append(offsets, a.at.Sub(start))
		}
		// Ceilings 1s, 2s, 4s (full jitter at its maximum here).
		require.Equal(t, []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second, 7 * time.Second}, offsets)
		for _, a := range got[1:4] {
			require.Equal(t, got[0].txnID, a.txnID, "the stored transaction is resent")
			require.Equal(t, got[0].body, a.body, "byte for byte")
		}
		require.NotEqual(t, got[0].txnID, got[4].txnID)
		require.Zero(t, h.src.queued("b.test"))
		require.Equal(t, 6.0, testutil.ToFloat64(h.m.EDUsSent.WithLabelValues(matrix.EDUDirectToDevice)))
		require.Equal(t, 3.0, testutil.ToFloat64(h.m.Transactions.WithLabelValues(ResultRetry)))
		require.Zero(t, h.store.dests["b.test"].failures, "success ends the backoff")
	})
}

func TestSenderHonoursRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(i int) error {
			if i == 0 {
				return fmt.Errorf("sending: %w", &matrixfed.HTTPError{Status: http.StatusTooManyRequests, RetryAfter: 42 * time.Second})
			}
			return nil
		}, nil)
		defer h.stop()
		start := time.Now()
		h.queue("b.test", 1)
		time.Sleep(time.Minute)
		synctest.Wait()
		got := h.client.list()
		require.Len(t, got, 2)
		require.Equal(t, 42*time.Second, got[1].at.Sub(start), "429 waits exactly Retry-After")
		require.Equal(t, 1.0, testutil.ToFloat64(h.m.Transactions.WithLabelValues(ResultRateLimited)))
	})
}

func TestSenderDropsWhatTheDestinationKeepsRefusing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		refuse := true
		var mu sync.Mutex
		h := newHarness(t, func(int) error {
			mu.Lock()
			defer mu.Unlock()
			if refuse {
				return status(http.StatusBadRequest)
			}
			return nil
		}, nil)
		defer h.stop()
		h.queue("b.test", 1)
		h.queue("c.test", 2) // another destination is not held up
		time.Sleep(time.Hour)
		synctest.Wait()

		var toB []attempt
		for _, a := range h.client.list() {
			if a.destination == "b.test" {
				toB = append(toB, a)
			}
		}
		require.Len(t, toB, RejectAfter, "dropped after %d refusals in a row", RejectAfter)
		require.Zero(t, h.src.queued("b.test"))
		require.Zero(t, h.src.queued("c.test"))
		require.Equal(t, 2.0, testutil.ToFloat64(h.m.EDUsDropped.WithLabelValues(DropRejected)))

		// The destination keeps its backoff; what is queued next goes
		// after it, in a new transaction.
		mu.Lock()
		refuse = false
		mu.Unlock()
		h.queue("b.test", 3)
		time.Sleep(time.Hour)
		synctest.Wait()
		last := h.client.list()[len(h.client.list())-1]
		require.Equal(t, "b.test", last.destination)
		require.NotEqual(t, toB[0].txnID, last.txnID)
		require.Zero(t, h.src.queued("b.test"))
	})
}

func TestSenderKeepsRetryingWhatIsNoVerdict(t *testing.T) {
	for _, code := range []int{http.StatusUnauthorized, http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusBadGateway} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, func(int) error { return status(code) }, nil)
				defer h.stop()
				h.queue("b.test", 1)
				time.Sleep(time.Hour)
				synctest.Wait()
				require.Greater(t, len(h.client.list()), 2*RejectAfter)
				require.Equal(t, 1, h.src.queued("b.test"), "still queued")
				require.Zero(t, testutil.ToFloat64(h.m.EDUsDropped.WithLabelValues(DropRejected)))
			})
		})
	}
}

func TestSenderExpiresWhatWaitsTooLong(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(int) error { return status(http.StatusBadGateway) },
			func(c *SenderConfig) { c.MessageTTL = 2 * time.Hour })
		defer h.stop()
		h.queue("b.test", 1)
		time.Sleep(90 * time.Minute)
		synctest.Wait()
		require.Equal(t, 1, h.src.queued("b.test"))
		time.Sleep(time.Hour)
		synctest.Wait()
		require.Zero(t, h.src.queued("b.test"), "dropped after the TTL")
		require.Equal(t, 1.0, testutil.ToFloat64(h.m.EDUsDropped.WithLabelValues(DropExpired)))
	})
}

func TestSenderDropsUnsignableEDUs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(int) error { return nil }, nil)
		defer h.stop()
		h.src.mu.Lock()
		h.src.edus = map[string][]SourceEDU{"b.test": {
			{Pos: 1, Type: matrix.EDUDirectToDevice, EDU: json.RawMessage(`{"content":{"x":1.5},"edu_type":"m.direct_to_device"}`)},
			{Pos: 2, Type: matrix.EDUDirectToDevice, EDU: json.RawMessage(`{"content":{"x":2},"edu_type":"m.direct_to_device"}`)},
		}}
		h.src.mu.Unlock()
		h.hub.Wake(wakeup.OutboxKey("b.test"))
		synctest.Wait()
		got := h.client.list()
		require.Len(t, got, 1)
		require.Contains(t, got[0].body, `"x":2`)
		require.NotContains(t, got[0].body, `1.5`)
		require.Zero(t, h.src.queued("b.test"))
		require.Equal(t, 1.0, testutil.ToFloat64(h.m.EDUsDropped.WithLabelValues(DropMalformed)))
	})
}

func TestSenderWaitsForAnotherHoldersLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(int) error { return nil }, func(c *SenderConfig) { c.LeaseTTL = 30 * time.Second })
		defer h.stop()
		// A crashed replica holds the destination.
		_, err := h.store.AcquireLease(context.Background(), "b.test", "dead", 20*time.Second)
		require.NoError(t, err)
		start := time.Now()
		h.queue("b.test", 1)
		time.Sleep(time.Minute)
		synctest.Wait()
		got := h.client.list()
		require.Len(t, got, 1)
		require.Equal(t, 20*time.Second, got[0].at.Sub(start), "taken over when the dead holder's lease lapses")
	})
}

func TestBackoffDelay(t *testing.T) {
	b := matrixfed.Backoff{Min: time.Second, Max: time.Minute, Rand: maxJitter}
	for failures, want := range map[int]time.Duration{
		0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 7: time.Minute, 100: time.Minute,
	} {
		require.Equal(t, want, b.Delay(failures), "ceiling after %d failures", failures)
	}
	b.Rand = func(int64) int64 { return 0 }
	require.Equal(t, 4*time.Second/10+1, b.Delay(3), "full jitter, floored at a tenth")
	b.Rand = nil
	for range 1000 {
		d := b.Delay(5)
		require.Greater(t, d, 16*time.Second/10)
		require.LessOrEqual(t, d, 16*time.Second)
	}
}

func TestBuildBatchReservesSlots(t *testing.T) {
	ctx := context.Background()
	todevice, lists := &memSource{}, &namedSource{memSource{}, "lists"}
	for i := range 150 {
		todevice.add("b.test", i)
	}
	sources := []SourceQuota{{Source: todevice, Quota: ToDeviceQuota}, {Source: lists, Quota: ReservedDeviceListEDUs}}

	batch, err := buildBatch(ctx, "b.test", sources, MaxEDUsPerTxn, nil, 0)
	require.NoError(t, err)
	require.Len(t, batch, MaxEDUsPerTxn, "spare reserved slots go to whoever has more")

	for i := range 30 {
		lists.add("b.test", 1000+i)
	}
	batch, err = buildBatch(ctx, "b.test", sources, MaxEDUsPerTxn, nil, 0)
	require.NoError(t, err)
	require.Len(t, batch, MaxEDUsPerTxn)
	bySource := map[string]int{}
	for i, e := range batch {
		bySource[e.source]++
		if i > 0 && batch[i-1].source == e.source {
			require.Less(t, batch[i-1].Pos, e.Pos, "a source's EDUs keep their order")
		}
	}
	require.Equal(t, map[string]int{"mem": ToDeviceQuota, "lists": ReservedDeviceListEDUs}, bySource,
		"to-device messages never crowd out the reserved slots")

	batch, err = buildBatch(ctx, "c.test", sources, MaxEDUsPerTxn, nil, 0)
	require.NoError(t, err)
	require.Empty(t, batch)
}

type namedSource struct {
	memSource
	name string
}

func (s *namedSource) Name() string { return s.name }

func TestTransactionBodyAndIDs(t *testing.T) {
	st := &StoredTxn{EDUs: encodeEDUList([]json.RawMessage{json.RawMessage(`{"a":1}`), json.RawMessage(`{"b":2}`)}), OriginServerTS: 1234}
	body := transactionBody("a.test", st)
	require.Equal(t, `{"edus":[{"a":1},{"b":2}],"origin":"a.test","origin_server_ts":1234,"pdus":[]}`, string(body))
	canonical, err := matrix.CanonicalJSON(body)
	require.NoError(t, err)
	require.Equal(t, string(body), string(canonical), "the body is already canonical")
	require.Equal(t, "[]", string(encodeEDUList(nil)))

	ids, other := newTxnIDs(), newTxnIDs()
	a, b := ids.next(), ids.next()
	require.NotEqual(t, a, b)
	require.Regexp(t, `^tdv[0-9a-f]{12}\.1$`, a)
	require.NotEqual(t, a, other.next(), "another process (epoch) never repeats an id")
}
