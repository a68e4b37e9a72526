package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
)

const (
	remote   = "remote.test"
	other    = "other.test"
	leaseFor = time.Minute
)

// queueRemote accepts one message per call for a user of destination and
// returns the queued EDUs of destination, oldest first.
func queueRemote(t *testing.T, b storage.Backend, destination string, ns ...int) []inbox.QueuedEDU {
	t.Helper()
	for _, n := range ns {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(destination, n)), to("@u:"+destination, "D", content(n)))
	}
	q, err := b.Inbox().PeekOutbox(ctx(t), destination, 1000)
	require.NoError(t, err)
	return q
}

// eduN returns the n of the one message an EDU queued by queueRemote carries.
func eduN(t *testing.T, e inbox.QueuedEDU) int {
	t.Helper()
	var edu struct {
		Content struct {
			Messages map[string]map[string]struct{ N int }
		}
	}
	require.NoError(t, json.Unmarshal(e.EDU, &edu))
	for _, devs := range edu.Content.Messages {
		for _, c := range devs {
			return c.N
		}
	}
	t.Fatal("EDU without messages")
	return 0
}

func positions(q []inbox.QueuedEDU) []int64 {
	out := make([]int64, len(q))
	for i, e := range q {
		out[i] = e.Pos
	}
	return out
}

// storedTxn builds the stored transaction for some queued EDUs.
func storedTxn(id string, q []inbox.QueuedEDU) *federation.StoredTxn {
	var buf bytes.Buffer
	buf.WriteByte('[')
	t := &federation.StoredTxn{ID: id, OriginServerTS: 1_700_000_000_123}
	for i, e := range q {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(e.EDU)
		t.Items = append(t.Items, federation.TxnItem{Source: inbox.OutboxSource, Pos: e.Pos})
	}
	buf.WriteByte(']')
	t.EDUs = buf.Bytes()
	return t
}

func acquire(t *testing.T, s federation.Store, destination, holder string, ttl time.Duration) federation.Lease {
	t.Helper()
	a, err := s.AcquireLease(ctx(t), destination, holder, ttl)
	require.NoError(t, err)
	require.True(t, a.Acquired, "%s should get the lease of %s (wait %s)", holder, destination, a.Wait)
	return a.Lease
}

// stealAfterExpiry shortens l to lapse at once and waits until holder gets
// the destination (by the database clock).
func stealAfterExpiry(t *testing.T, s federation.Store, l federation.Lease, holder string) federation.Lease {
	t.Helper()
	require.NoError(t, s.RenewLease(ctx(t), l, time.Microsecond))
	var got federation.Lease
	waitFor(t, "the lease to lapse", func() bool {
		a, err := s.AcquireLease(ctx(t), l.Destination, holder, leaseFor)
		require.NoError(t, err)
		got = a.Lease
		return a.Acquired
	})
	return got
}

func testLease(t *testing.T, e *Env) {
	s := e.Open(Options{}).Federation()
	l1 := acquire(t, s, remote, "h1", leaseFor)

	a, err := s.AcquireLease(ctx(t), remote, "h2", leaseFor)
	require.NoError(t, err)
	require.False(t, a.Acquired, "a held lease is not handed out twice")
	require.False(t, a.BackingOff)
	require.Greater(t, a.Wait, time.Duration(0))
	require.LessOrEqual(t, a.Wait, leaseFor)

	other1 := acquire(t, s, other, "h2", leaseFor)
	require.NoError(t, s.RenewLease(ctx(t), l1, leaseFor), "the holder renews")

	require.NoError(t, s.ReleaseLease(ctx(t), l1))
	l2 := acquire(t, s, remote, "h2", leaseFor)
	require.Greater(t, l2.Generation, l1.Generation, "every acquisition is a new generation")
	require.ErrorIs(t, s.RenewLease(ctx(t), l1, leaseFor), federation.ErrLeaseLost, "a released lease cannot be renewed")
	require.NoError(t, s.ReleaseLease(ctx(t), l1), "releasing a lost lease changes nothing")
	require.NoError(t, s.RenewLease(ctx(t), l2, leaseFor), "an old holder's release leaves the new lease alone")

	// Steal after expiry: the lapsed holder is fenced out.
	l3 := stealAfterExpiry(t, s, l2, "h3")
	require.Greater(t, l3.Generation, l2.Generation)
	require.ErrorIs(t, s.RenewLease(ctx(t), l2, leaseFor), federation.ErrLeaseLost)

	// The same holder acquiring again is a new generation too: a restarted
	// process never inherits its old writes' fence.
	require.NoError(t, s.ReleaseLease(ctx(t), l3))
	l4 := acquire(t, s, remote, "h3", leaseFor)
	require.ErrorIs(t, s.RenewLease(ctx(t), l3, leaseFor), federation.ErrLeaseLost)
	require.NoError(t, s.RenewLease(ctx(t), l4, leaseFor))
	require.NoError(t, s.RenewLease(ctx(t), other1, leaseFor), "leases are per destination")
}

func testLeaseConcurrentAcquire(t *testing.T, e *Env) {
	instances := []storage.Backend{e.Open(Options{})}
	if e.h.MultiInstance {
		instances = append(instances, e.Open(Options{}))
	}
	const n = 12
	var wins atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			a, err := instances[i%len(instances)].Federation().AcquireLease(ctx(t), remote, fmt.Sprint("h", i), leaseFor)
			require.NoError(t, err)
			if a.Acquired {
				wins.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	require.EqualValues(t, 1, wins.Load(), "exactly one of the concurrent acquirers holds the lease")
}

func testFencing(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Federation()
	q := queueRemote(t, b, remote, 1, 2, 3)
	old := acquire(t, s, remote, "old", leaseFor)
	require.NoError(t, s.SaveTxn(ctx(t), old, storedTxn("t1", q[:2])))
	_, err := s.RecordFailure(ctx(t), old, federation.FailedAttempt{TxnID: "t1", Status: 400})
	require.NoError(t, err)

	cur := stealAfterExpiry(t, s, old, "new")

	_, err = s.CompleteTxn(ctx(t), old, "t1")
	require.ErrorIs(t, err, federation.ErrLeaseLost)
	_, err = s.DropTxn(ctx(t), old, "t1")
	require.ErrorIs(t, err, federation.ErrLeaseLost)
	_, err = s.RecordFailure(ctx(t), old, federation.FailedAttempt{TxnID: "t1", Status: 400, Wait: time.Hour})
	require.ErrorIs(t, err, federation.ErrLeaseLost)
	require.ErrorIs(t, s.SaveTxn(ctx(t), old, storedTxn("t2", q[2:])), federation.ErrLeaseLost)

	st, err := s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Equal(t, "t1", st.ID, "the fenced-out holder changed nothing")
	require.Equal(t, 1, st.Attempts)
	rest, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Len(t, rest, 3)
	n, err := b.Federation().BackingOff(ctx(t))
	require.NoError(t, err)
	require.Zero(t, n, "the fenced-out failure set no backoff")

	// The new holder resends the stored transaction and finishes it.
	deleted, err := s.CompleteTxn(ctx(t), cur, "t1")
	require.NoError(t, err)
	require.Equal(t, 2, deleted)
}

func testStoredTxnRoundTrip(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Federation()
	st, err := s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Nil(t, st)

	q := queueRemote(t, b, remote, 1, 2, 3)
	l := acquire(t, s, remote, "h1", leaseFor)
	want := storedTxn("tdvabc.1", q)
	require.NoError(t, s.SaveTxn(ctx(t), l, want))
	require.ErrorIs(t, s.SaveTxn(ctx(t), l, storedTxn("tdvabc.2", q)), federation.ErrTxnExists,
		"one stored transaction per destination")

	// Read back from another instance, as a restarted process would.
	got, err := e.Open(Options{}).Federation().StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Equal(t, want.ID, got.ID)
	require.Equal(t, []byte(want.EDUs), []byte(got.EDUs), "the EDUs come back byte for byte")
	require.Equal(t, want.OriginServerTS, got.OriginServerTS)
	require.Equal(t, want.Items, got.Items)
	require.Equal(t, remote, got.Destination)
	require.Less(t, got.Age, time.Hour)
	require.Zero(t, got.Attempts)

	// The rejection streak counts the same status in a row.
	for i, tc := range []struct{ status, same int }{{400, 1}, {400, 2}, {0, 0}, {400, 1}, {403, 1}, {403, 2}} {
		same, err := s.RecordFailure(ctx(t), l, federation.FailedAttempt{TxnID: want.ID, Status: tc.status, Wait: time.Hour})
		require.NoError(t, err)
		require.Equal(t, tc.same, same, "attempt %d (status %d)", i, tc.status)
	}
	_, err = s.RecordFailure(ctx(t), l, federation.FailedAttempt{TxnID: "nope", Wait: time.Hour})
	require.ErrorIs(t, err, federation.ErrNoTxn)
	got, err = s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Equal(t, 6, got.Attempts)
	require.Equal(t, 403, got.LastStatus)
	require.Equal(t, 2, got.SameStatus)

	dests, err := s.TxnDestinations(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{remote}, dests)

	// The backoff is persisted: nobody, not even after a restart, starts
	// before it ends, and the failure count is remembered.
	require.NoError(t, s.ReleaseLease(ctx(t), l))
	a, err := e.Open(Options{}).Federation().AcquireLease(ctx(t), remote, "h2", leaseFor)
	require.NoError(t, err)
	require.False(t, a.Acquired, "a destination backing off is not leased")
	require.True(t, a.BackingOff)
	require.Greater(t, a.Wait, 50*time.Minute)
	require.LessOrEqual(t, a.Wait, time.Hour)
	require.Equal(t, 6, a.Failures, "the refused record changed nothing")
	n, err := s.BackingOff(ctx(t))
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func testCompleteDeletesExactlyTheRows(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Federation()
	q := queueRemote(t, b, remote, 0, 1, 2, 3, 4)
	qo := queueRemote(t, b, other, 9)
	l := acquire(t, s, remote, "h1", leaseFor)
	require.NoError(t, s.SaveTxn(ctx(t), l, storedTxn("t1", []inbox.QueuedEDU{q[0], q[2]})))
	_, err := s.RecordFailure(ctx(t), l, federation.FailedAttempt{TxnID: "t1", Wait: time.Microsecond})
	require.NoError(t, err)

	_, err = s.CompleteTxn(ctx(t), l, "t-other")
	require.ErrorIs(t, err, federation.ErrNoTxn)

	n, err := s.CompleteTxn(ctx(t), l, "t1")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	rest, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Equal(t, []int64{q[1].Pos, q[3].Pos, q[4].Pos}, positions(rest), "exactly the covered rows are gone")
	still, err := b.Inbox().PeekOutbox(ctx(t), other, 10)
	require.NoError(t, err)
	require.Equal(t, positions(qo), positions(still))
	st, err := s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Nil(t, st)

	// Success ended the backoff.
	require.NoError(t, s.ReleaseLease(ctx(t), l))
	l = acquire(t, s, remote, "h2", leaseFor)
	a, err := s.AcquireLease(ctx(t), remote, "h3", leaseFor)
	require.NoError(t, err)
	require.Zero(t, a.Failures)

	// A drop deletes exactly its rows too, and keeps the backoff.
	require.NoError(t, s.SaveTxn(ctx(t), l, storedTxn("t2", rest[:1])))
	_, err = s.RecordFailure(ctx(t), l, federation.FailedAttempt{TxnID: "t2", Status: 400, Wait: time.Hour})
	require.NoError(t, err)
	n, err = s.DropTxn(ctx(t), l, "t2")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	rest2, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Equal(t, positions(rest[1:]), positions(rest2))
	backingOff, err := s.BackingOff(ctx(t))
	require.NoError(t, err)
	require.Equal(t, 1, backingOff)

	// DeleteOutbox deletes exactly the listed positions of its destination.
	n, err = b.Inbox().DeleteOutbox(ctx(t), remote, []int64{qo[0].Pos, rest2[1].Pos, rest2[1].Pos + 1_000_000})
	require.NoError(t, err)
	require.Equal(t, 1, n, "a position of another destination is not deleted")
	rest3, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Equal(t, positions(rest2[:1]), positions(rest3))
	n, err = b.Inbox().DeleteOutbox(ctx(t), remote, nil)
	require.NoError(t, err)
	require.Zero(t, n)
}

// testOutboxOrder drives invariant 3 on the outbox: a sender peeking and
// deleting exactly what it sent while a send to the same destination is
// still open must still hand the destination every EDU once, in order.
func testOutboxOrder(t *testing.T, e *Env) {
	entered, release := make(chan struct{}), make(chan struct{})
	b := e.Open(Options{Hooks: inbox.Hooks{BeforeAcceptCommit: func(_ context.Context, a *inbox.Accept) error {
		if a.Txn.TxnID == "first" {
			close(entered)
			<-release
		}
		return nil
	}}})
	inst := b
	if e.h.MultiInstance {
		inst = e.Open(Options{})
	}
	var sent []int
	send := func() {
		q, err := b.Inbox().PeekOutbox(ctx(t), remote, 100)
		require.NoError(t, err)
		if len(q) == 0 {
			return // (SQLite: a delete would queue behind the open send)
		}
		for _, edu := range q {
			sent = append(sent, eduN(t, edu))
		}
		_, err = b.Inbox().DeleteOutbox(ctx(t), remote, positions(q))
		require.NoError(t, err)
	}
	// The destination is known already and its queue drained, as in
	// steady state.
	queueRemote(t, b, remote, 0)
	send()
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		accept(t, b, txn(alice, "A1", "m.test", "first"), inbox.Messages{
			"@u:" + remote: {"D": content(1)}, "@v:other.test": {"D": content(1)},
		})
	}()
	<-entered
	secondDone := make(chan struct{})
	go func() {
		defer close(secondDone)
		accept(t, inst, txn(alice, "A2", "m.test", "second"), to("@u:"+remote, "D", content(2)))
	}()
	waitFor(t, "the second send to commit or wait", func() bool {
		select {
		case <-secondDone:
			return true
		default:
			return e.h.WaitingWriters(t, b) >= 1
		}
	})
	send() // while the first send is still open
	close(release)
	<-firstDone
	<-secondDone
	send()
	send()
	require.Equal(t, []int{0, 1, 2}, sent, "every EDU reaches the destination once, in commit order")
}

func testExpireOutbox(t *testing.T, e *Env) {
	b := e.Open(Options{})
	q := queueRemote(t, b, remote, 1, 2, 3, 4)
	queueRemote(t, b, other, 5)
	s := b.Federation()
	l := acquire(t, s, remote, "h1", leaseFor)
	require.NoError(t, s.SaveTxn(ctx(t), l, storedTxn("t1", q[:1])))

	got, err := b.Inbox().ExpireOutbox(ctx(t), time.Now().Add(-time.Hour), 100)
	require.NoError(t, err)
	require.Empty(t, got, "nothing is older than the cutoff")

	got, err = b.Inbox().ExpireOutbox(ctx(t), time.Now().Add(time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, []inbox.DestinationCount{{Destination: remote, Count: 2}}, got, "oldest first, bounded")
	got, err = b.Inbox().ExpireOutbox(ctx(t), time.Now().Add(time.Hour), 100)
	require.NoError(t, err)
	total := 0
	for _, c := range got {
		total += c.Count
	}
	require.Equal(t, 2, total)
	rest, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Equal(t, positions(q[:1]), positions(rest), "a stored transaction's rows are not expired under it")
	dests, err := b.Inbox().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{remote}, dests)
}

func testOutboxBacklog(t *testing.T, e *Env) {
	b := e.Open(Options{})
	bl, err := b.Inbox().OutboxBacklog(ctx(t))
	require.NoError(t, err)
	require.Zero(t, bl.Pending)
	require.True(t, bl.Oldest.IsZero())
	dests, err := b.Inbox().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Empty(t, dests)

	before := time.Now().Add(-time.Minute)
	queueRemote(t, b, remote, 1, 2)
	queueRemote(t, b, other, 3)
	bl, err = b.Inbox().OutboxBacklog(ctx(t))
	require.NoError(t, err)
	require.EqualValues(t, 3, bl.Pending)
	require.True(t, bl.Oldest.After(before) && bl.Oldest.Before(time.Now().Add(time.Minute)), "oldest %v", bl.Oldest)
	dests, err = b.Inbox().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{other, remote}, dests)
}

func remoteAccept(t *testing.T, origin, messageID string, msgs inbox.Messages) *inbox.RemoteAccept {
	t.Helper()
	r, err := inbox.BuildRemoteAccept(server, origin, messageID, "@sender:"+origin, "m.test", msgs)
	require.NoError(t, err)
	return r
}

// acceptRemote stores one EDU from another server.
func acceptRemote(t *testing.T, b storage.Backend, r *inbox.RemoteAccept) (inbox.AcceptResult, error) {
	res, err := b.Inbox().AcceptRemote(ctx(t), []*inbox.RemoteAccept{r})
	if err != nil {
		return inbox.AcceptResult{}, err
	}
	require.Len(t, res, 1)
	return res[0], nil
}

func testInboundDedupe(t *testing.T, e *Env) {
	var failing atomic.Bool
	b := e.Open(Options{Hooks: inbox.Hooks{BeforeAcceptRemoteCommit: func(context.Context, []*inbox.RemoteAccept) error {
		if failing.Load() {
			return errors.New("simulated crash before commit")
		}
		return nil
	}}})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	for _, id := range []string{"A1", "A2"} {
		mkDevice(t, b, alice, id)
	}

	res, err := acceptRemote(t, b, remoteAccept(t, remote, "m1", to(bob, "B1", content(1))))
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.Equal(t, 1, res.Delivered)
	res, err = acceptRemote(t, b, remoteAccept(t, remote, "m1", to(bob, "B1", content(99))))
	require.NoError(t, err)
	require.True(t, res.Duplicate, "the same (origin, message_id) is stored once")
	require.Zero(t, res.Delivered)
	res, err = acceptRemote(t, b, remoteAccept(t, other, "m1", to(bob, "B1", content(2))))
	require.NoError(t, err)
	require.False(t, res.Duplicate, "message ids are scoped by origin")

	// The record and the inbox rows commit together or not at all.
	failing.Store(true)
	_, err = acceptRemote(t, b, remoteAccept(t, remote, "m2", to(bob, "B1", content(3))))
	require.Error(t, err)
	failing.Store(false)
	res, err = acceptRemote(t, b, remoteAccept(t, remote, "m2", to(bob, "B1", content(3))))
	require.NoError(t, err)
	require.False(t, res.Duplicate, "a failed store recorded no message id")

	// "*" expands to the user's devices; unknown devices are dropped.
	res, err = acceptRemote(t, b, remoteAccept(t, remote, "m3", inbox.Messages{
		alice: {"*": content(4)}, bob: {"NOPE": content(4)},
	}))
	require.NoError(t, err)
	require.Equal(t, 2, res.Delivered)
	require.Equal(t, 1, res.Unknown)

	// Concurrent copies, on every instance: one is stored.
	instances := []storage.Backend{b}
	if e.h.MultiInstance {
		instances = append(instances, e.Open(Options{}))
	}
	var firsts atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 10 {
		wg.Go(func() {
			<-start
			res, err := acceptRemote(t, instances[i%len(instances)], remoteAccept(t, remote, "m4", to(bob, "B1", content(5))))
			require.NoError(t, err)
			if !res.Duplicate {
				firsts.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	require.EqualValues(t, 1, firsts.Load())

	evs, _ := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{1, 2, 3, 5}, eventNs(t, evs))
	require.Equal(t, "@sender:"+remote, evs[0].Sender)

	// Pruned records no longer deduplicate.
	n, err := b.Inbox().PruneInboundDedupe(ctx(t), time.Now().Add(-time.Hour), 100)
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = b.Inbox().PruneInboundDedupe(ctx(t), time.Now().Add(time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	for {
		n, err = b.Inbox().PruneInboundDedupe(ctx(t), time.Now().Add(time.Hour), 2)
		require.NoError(t, err)
		if n == 0 {
			break
		}
	}
	res, err = acceptRemote(t, b, remoteAccept(t, remote, "m1", to(bob, "B1", content(6))))
	require.NoError(t, err)
	require.False(t, res.Duplicate)
}

func testInboundTxnRecord(t *testing.T, e *Env) {
	s := e.Open(Options{}).Federation()
	_, found, err := s.InboundTxn(ctx(t), remote, "t1")
	require.NoError(t, err)
	require.False(t, found)
	require.NoError(t, s.RecordInboundTxn(ctx(t), remote, "t1", []byte(`{"pdus":{}}`)))
	require.NoError(t, s.RecordInboundTxn(ctx(t), remote, "t1", []byte(`{"other":1}`)))
	resp, found, err := e.Open(Options{}).Federation().InboundTxn(ctx(t), remote, "t1")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, `{"pdus":{}}`, string(resp), "the first answer wins")
	_, found, err = s.InboundTxn(ctx(t), other, "t1")
	require.NoError(t, err)
	require.False(t, found, "transaction ids are scoped by origin")

	require.NoError(t, s.RecordInboundTxn(ctx(t), other, "t1", []byte(`{}`)))
	n, err := s.PruneInboundTxns(ctx(t), time.Now().Add(-time.Hour), 10)
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = s.PruneInboundTxns(ctx(t), time.Now().Add(time.Hour), 1)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = s.PruneInboundTxns(ctx(t), time.Now().Add(time.Hour), 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, found, err = s.InboundTxn(ctx(t), remote, "t1")
	require.NoError(t, err)
	require.False(t, found)
}

// testInboundBatch stores the to-device EDUs of one inbound transaction
// together: duplicates within the batch and of earlier batches store nothing,
// the others land in order, and batches naming the same ids in opposite
// orders, at once, neither deadlock nor store anything twice.
func testInboundBatch(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	alices := []inbox.Recipient{mkDevice(t, b, alice, "A1"), mkDevice(t, b, alice, "A2")}
	_, err := acceptRemote(t, b, remoteAccept(t, remote, "old", to(bob, "B1", content(0))))
	require.NoError(t, err)

	res, err := b.Inbox().AcceptRemote(ctx(t), []*inbox.RemoteAccept{
		remoteAccept(t, remote, "m1", to(bob, "B1", content(1))),
		remoteAccept(t, remote, "old", to(bob, "B1", content(99))),
		remoteAccept(t, remote, "m2", inbox.Messages{bob: {"B1": content(2)}, alice: {"*": content(2)}}),
		remoteAccept(t, remote, "m1", to(bob, "B1", content(98))),
		remoteAccept(t, remote, "m3", inbox.Messages{bob: {"NOPE": content(3), "B1": content(3)}}),
	})
	require.NoError(t, err)
	require.Len(t, res, 5)
	require.Equal(t, []bool{false, true, false, true, false}, []bool{res[0].Duplicate, res[1].Duplicate, res[2].Duplicate, res[3].Duplicate, res[4].Duplicate})
	require.Equal(t, []int{1, 0, 3, 0, 1}, []int{res[0].Delivered, res[1].Delivered, res[2].Delivered, res[3].Delivered, res[4].Delivered})
	require.Equal(t, 1, res[4].Unknown)
	evs, _ := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{0, 1, 2, 3}, eventNs(t, evs), "in order, once each")
	for _, a := range alices {
		evs, _ := drain(t, svc, a, inbox.Position{NID: a.NID})
		require.Equal(t, []int{2}, eventNs(t, evs))
	}

	var wg sync.WaitGroup
	var stored atomic.Int32
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				ids := []string{fmt.Sprint("x", i), fmt.Sprint("y", i)}
				if w%2 == 1 {
					ids[0], ids[1] = ids[1], ids[0]
				}
				var batch []*inbox.RemoteAccept
				for _, id := range ids {
					batch = append(batch, remoteAccept(t, remote, id, to(bob, "B1", content(100+i))))
				}
				res, err := b.Inbox().AcceptRemote(ctx(t), batch)
				require.NoError(t, err, "concurrent batches must not fail (deadlock)")
				for _, r := range res {
					if !r.Duplicate {
						stored.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 20, stored.Load(), "every message id stored once")
	evs, _ = drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Len(t, evs, 20)
}

// testReplaceTxn: a split replaces the stored transaction atomically and
// fenced (invariant 8): the new one has its own id, EDUs and items, a fresh
// streak and the old one's age; the EDUs it leaves out stay queued, and
// completing it deletes exactly its own rows.
func testReplaceTxn(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Federation()
	q := queueRemote(t, b, remote, 0, 1, 2, 3)
	l := acquire(t, s, remote, "h1", leaseFor)
	require.NoError(t, s.SaveTxn(ctx(t), l, storedTxn("t1", q)))
	for range 3 {
		_, err := s.RecordFailure(ctx(t), l, federation.FailedAttempt{TxnID: "t1", Status: 500, Wait: time.Microsecond})
		require.NoError(t, err)
	}
	before, err := s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)

	require.ErrorIs(t, s.ReplaceTxn(ctx(t), l, "t-other", storedTxn("t2", q[:2])), federation.ErrNoTxn)
	half := storedTxn("t2", q[:2])
	half.OriginServerTS = 1_700_000_000_999
	require.NoError(t, s.ReplaceTxn(ctx(t), l, "t1", half))
	got, err := s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Equal(t, "t2", got.ID)
	require.JSONEq(t, string(half.EDUs), string(got.EDUs))
	require.Equal(t, half.OriginServerTS, got.OriginServerTS)
	require.ElementsMatch(t, half.Items, got.Items)
	require.Zero(t, got.Attempts)
	require.Zero(t, got.SameStatus)
	require.GreaterOrEqual(t, got.Age, before.Age, "the replacement keeps the first store's age (the TTL counts from it)")

	// A lost lease changes nothing.
	l2 := stealAfterExpiry(t, s, l, "h2")
	require.ErrorIs(t, s.ReplaceTxn(ctx(t), l, "t2", storedTxn("t3", q[:1])), federation.ErrLeaseLost)
	got, err = s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Equal(t, "t2", got.ID)

	n, err := s.CompleteTxn(ctx(t), l2, "t2")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	rest, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Equal(t, positions(q[2:]), positions(rest), "the EDUs left out stay queued, unchanged")
	require.Equal(t, q[2].EDU, rest[0].EDU)

	// Replacing by nothing removes the stored transaction and keeps its rows.
	require.NoError(t, s.SaveTxn(ctx(t), l2, storedTxn("t4", rest)))
	require.NoError(t, s.ReplaceTxn(ctx(t), l2, "t4", nil))
	got, err = s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Nil(t, got)
	still, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Equal(t, positions(rest), positions(still))
	require.ErrorIs(t, s.ReplaceTxn(ctx(t), l2, "t4", nil), federation.ErrNoTxn)
}
