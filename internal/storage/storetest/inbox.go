package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/wakeup"
)

const (
	server = "example.org"
	alice  = "@alice:example.org"
	bob    = "@bob:example.org"
	carol  = "@carol:example.org"
)

func txn(user, device, eventType, id string) inbox.TxnKey {
	return inbox.TxnKey{UserID: user, DeviceID: device, EventType: eventType, TxnID: id}
}

func content(v any) json.RawMessage {
	b, err := json.Marshal(map[string]any{"n": v})
	if err != nil {
		panic(err)
	}
	return b
}

// accept builds and stores one request with the store directly, so tests
// see the AcceptResult.
func accept(t *testing.T, b storage.Backend, k inbox.TxnKey, msgs inbox.Messages) inbox.AcceptResult {
	t.Helper()
	a, err := inbox.BuildAccept(server, k, msgs)
	require.NoError(t, err)
	res, err := b.Inbox().Accept(ctx(t), a)
	require.NoError(t, err)
	return res
}

// to addresses one message to one device.
func to(user, device string, c json.RawMessage) inbox.Messages {
	return inbox.Messages{user: {device: c}}
}

// drain syncs until nothing more is pending and returns every event and the
// last position.
func drain(t *testing.T, svc *inbox.Service, dev inbox.Recipient, pos inbox.Position) ([]inbox.Event, inbox.Position) {
	t.Helper()
	var all []inbox.Event
	for i := 0; ; i++ {
		require.Less(t, i, 10_000, "drain does not end")
		b, err := svc.Sync(ctx(t), dev, pos, 100)
		require.NoError(t, err)
		all = append(all, b.Events...)
		pos = b.Next
		if len(b.Events) == 0 {
			return all, pos
		}
	}
}

func eventNs(t *testing.T, evs []inbox.Event) []int {
	t.Helper()
	out := make([]int, len(evs))
	for i, e := range evs {
		var c struct{ N int }
		require.NoError(t, json.Unmarshal(e.Content, &c))
		out[i] = c.N
	}
	return out
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// waitFor polls cond until it holds; a hang is caught by the test context.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	c := ctx(t)
	for !cond() {
		select {
		case <-c.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func testAcceptAndSyncInOrder(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	for i := range 5 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	batch, err := svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 100)
	require.NoError(t, err)
	require.False(t, batch.Limited)
	require.Equal(t, seq(0, 5), eventNs(t, batch.Events), "messages come out in acceptance order")
	for _, ev := range batch.Events {
		require.Equal(t, alice, ev.Sender)
		require.Equal(t, "m.test", ev.Type)
	}
	require.JSONEq(t, `{"n":0}`, string(batch.Events[0].Content))
}

func testAtomicAccept(t *testing.T, e *Env) {
	var crash atomic.Bool
	crash.Store(true)
	b := e.Open(Options{Hooks: inbox.Hooks{BeforeAcceptCommit: func(context.Context, *inbox.Accept) error {
		if crash.Load() {
			return errors.New("simulated crash before commit")
		}
		return nil
	}}})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	msgs := inbox.Messages{bob: {"B1": content(1)}, "@carol:remote.test": {"C1": content(2)}}
	a, err := inbox.BuildAccept(server, txn(alice, "A1", "m.test", "t1"), msgs)
	require.NoError(t, err)
	_, err = b.Inbox().Accept(ctx(t), a)
	require.Error(t, err, "the failed commit must surface")

	evs, _ := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Empty(t, evs, "no inbox row survives a failed accept")
	q, err := b.Inbox().PeekOutbox(ctx(t), "remote.test", 10)
	require.NoError(t, err)
	require.Empty(t, q, "no outbox row survives a failed accept")

	// The transaction was not recorded either: the retry is a new send.
	crash.Store(false)
	res := accept(t, b, txn(alice, "A1", "m.test", "t1"), msgs)
	require.False(t, res.Duplicate, "a failed request must not be recorded")
	require.Equal(t, 1, res.Delivered)
	evs, _ = drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{1}, eventNs(t, evs))
	q, err = b.Inbox().PeekOutbox(ctx(t), "remote.test", 10)
	require.NoError(t, err)
	require.Len(t, q, 1)
}

func testIdempotentRetry(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	res := accept(t, b, txn(alice, "A1", "m.test", "t1"), to(bob, "B1", content(1)))
	require.False(t, res.Duplicate)
	require.JSONEq(t, `{}`, string(res.Response))

	again := accept(t, b, txn(alice, "A1", "m.test", "t1"), to(bob, "B1", content(99)))
	require.True(t, again.Duplicate, "same device, type and txn id is a retry")
	require.Equal(t, res.Response, again.Response, "a retry gets the first response")
	require.Zero(t, again.Delivered)

	otherDevice := accept(t, b, txn(alice, "A2", "m.test", "t1"), to(bob, "B1", content(2)))
	require.False(t, otherDevice.Duplicate, "another device of the same user is a new request")
	otherType := accept(t, b, txn(alice, "A1", "m.other", "t1"), to(bob, "B1", content(3)))
	require.False(t, otherType.Duplicate, "another event type is a new request")

	evs, pos := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{1, 2, 3}, eventNs(t, evs))

	// Through the service as well, on a second instance when the backend has
	// replicas: the record is in the database, not in memory.
	other := b
	if e.h.MultiInstance {
		other = e.Open(Options{})
	}
	resp, err := Service(other, server).Send(ctx(t), txn(alice, "A1", "m.test", "t1"), to(bob, "B1", content(100)))
	require.NoError(t, err)
	require.JSONEq(t, `{}`, string(resp))
	evs, _ = drain(t, svc, dev, pos)
	require.Empty(t, evs, "the retry through another instance enqueued nothing")
}

func testConcurrentRetry(t *testing.T, e *Env) {
	instances := []storage.Backend{e.Open(Options{})}
	if e.h.MultiInstance {
		instances = append(instances, e.Open(Options{}))
	}
	dev := mkDevice(t, instances[0], bob, "B1")
	const n = 12
	var wg sync.WaitGroup
	var firsts atomic.Int32
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			b := instances[i%len(instances)]
			a, err := inbox.BuildAccept(server, txn(alice, "A1", "m.test", "same"), to(bob, "B1", content(i)))
			require.NoError(t, err)
			res, err := b.Inbox().Accept(ctx(t), a)
			require.NoError(t, err)
			if !res.Duplicate {
				firsts.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	require.EqualValues(t, 1, firsts.Load(), "exactly one of the concurrent retries is the first")
	evs, _ := drain(t, Service(instances[0], server), dev, inbox.Position{NID: dev.NID})
	require.Len(t, evs, 1, "the message is enqueued once")
}

func testRetryWhileFirstRunning(t *testing.T, e *Env) {
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	b := e.Open(Options{Hooks: inbox.Hooks{BeforeAcceptCommit: func(context.Context, *inbox.Accept) error {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
		return nil
	}}})
	dev := mkDevice(t, b, bob, "B1")
	first := make(chan inbox.AcceptResult, 1)
	go func() { first <- accept(t, b, txn(alice, "A1", "m.test", "t"), to(bob, "B1", content(1))) }()
	<-entered
	second := make(chan inbox.AcceptResult, 1)
	go func() { second <- accept(t, b, txn(alice, "A1", "m.test", "t"), to(bob, "B1", content(2))) }()
	waitFor(t, "the retry to block behind the first request", func() bool {
		select {
		case r := <-second:
			t.Fatalf("the retry finished while the first request was still open: %+v", r)
		default:
		}
		return e.h.WaitingWriters(t, b) >= 1
	})
	close(release)
	r1, r2 := <-first, <-second
	require.False(t, r1.Duplicate)
	require.True(t, r2.Duplicate, "a retry arriving during the first request is answered as a retry")
	require.Equal(t, r1.Response, r2.Response)
	evs, _ := drain(t, Service(b, server), dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{1}, eventNs(t, evs))
}

// testLateCommitNeverSkipped drives invariant 3: the first send holds its
// transaction open; a second send to the same device, a sync and an
// acknowledgement happen meanwhile; whatever the design does with positions,
// the device must end up with both messages, once each, in order.
func testLateCommitNeverSkipped(t *testing.T, e *Env) {
	entered, release := make(chan struct{}), make(chan struct{})
	b := e.Open(Options{Hooks: inbox.Hooks{BeforeAcceptCommit: func(_ context.Context, a *inbox.Accept) error {
		if a.Txn.TxnID == "first" {
			close(entered)
			<-release
		}
		return nil
	}}})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	mkDevice(t, b, carol, "C1")
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		accept(t, b, txn(alice, "A1", "m.test", "first"), inbox.Messages{bob: {"B1": content(1)}, carol: {"C1": content(1)}})
	}()
	<-entered
	secondDone := make(chan struct{})
	go func() {
		defer close(secondDone)
		accept(t, b, txn(alice, "A2", "m.test", "second"), to(bob, "B1", content(2)))
	}()
	waitFor(t, "the second send to commit or wait", func() bool {
		select {
		case <-secondDone:
			return true
		default:
			return e.h.WaitingWriters(t, b) >= 1
		}
	})
	// A sync and its acknowledgement while the first send is still open.
	var got []inbox.Event
	pos := inbox.Position{NID: dev.NID}
	for range 2 {
		batch, err := svc.Sync(ctx(t), dev, pos, 100)
		require.NoError(t, err)
		got = append(got, batch.Events...)
		pos = batch.Next
	}
	close(release)
	<-firstDone
	<-secondDone
	rest, _ := drain(t, svc, dev, pos)
	got = append(got, rest...)
	require.Equal(t, []int{1, 2}, eventNs(t, got), "both messages arrive once each, in commit order")
}

func testOverlappingFanOuts(t *testing.T, e *Env) {
	instances := []storage.Backend{e.Open(Options{})}
	if e.h.MultiInstance {
		instances = append(instances, e.Open(Options{}))
	}
	users := []string{alice, bob, carol}
	type dev struct{ user, id string }
	var devs []dev
	recips := map[dev]inbox.Recipient{}
	for _, u := range users {
		for i := range 8 {
			d := dev{u, fmt.Sprintf("D%d", i)}
			devs = append(devs, d)
			recips[d] = mkDevice(t, instances[0], u, d.id)
		}
	}
	const workers, sends = 8, 15
	var wg sync.WaitGroup
	expected := make([]atomic.Int32, len(devs))
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for s := range sends {
				msgs := inbox.Messages{}
				for _, i := range rng.Perm(len(devs))[:10] {
					d := devs[i]
					if msgs[d.user] == nil {
						msgs[d.user] = map[string]json.RawMessage{}
					}
					msgs[d.user][d.id] = content(s)
					expected[i].Add(1)
				}
				a, err := inbox.BuildAccept(server, txn(alice, fmt.Sprint("W", w), "m.test", fmt.Sprint(s)), msgs)
				require.NoError(t, err)
				_, err = instances[(w+s)%len(instances)].Inbox().Accept(ctx(t), a)
				require.NoError(t, err, "concurrent overlapping fan-outs must not fail (deadlock)")
			}
		})
	}
	wg.Wait()
	svc := Service(instances[0], server)
	for i, d := range devs {
		evs, _ := drain(t, svc, recips[d], inbox.Position{NID: recips[d].NID})
		require.Len(t, evs, int(expected[i].Load()), "device %s/%s", d.user, d.id)
	}
}

func testPositionsNeverReused(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	old := mkDevice(t, b, bob, "B1")
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	evs, pos := drain(t, svc, old, inbox.Position{NID: old.NID})
	require.Len(t, evs, 3)
	oldToken := devicesync.FormatToDevice(svc.Epoch(), pos)

	_, err := b.Devices().DeleteDevice(ctx(t), bob, "B1")
	require.NoError(t, err)
	require.NoError(t, svc.PurgeDevice(ctx(t), old))
	require.NoError(t, b.Devices().ForgetTombstone(ctx(t), old.NID))

	renewed := mkDevice(t, b, bob, "B1")
	require.NotEqual(t, old.NID, renewed.NID, "a re-created device is a new incarnation")
	accept(t, b, txn(alice, "A1", "m.test", "after"), to(bob, "B1", content(42)))

	// Even read straight at the store, the old position acknowledges nothing
	// of the new device: positions are never issued twice.
	res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: renewed, AckLo: 0, AckHi: pos.Hi, Limit: 100})
	require.NoError(t, err)
	require.Zero(t, res.Acked, "an old position acknowledged a new message")
	require.Len(t, res.Messages, 1)
	require.Greater(t, res.Messages[0].Pos, pos.Hi, "positions must grow past every earlier one")

	// And the old token, parsed for the new device, is an initial sync.
	p, err := devicesync.ParseToDevice(svc.Epoch(), renewed, oldToken)
	require.NoError(t, err)
	require.Equal(t, inbox.Position{NID: renewed.NID}, p)
	evs, _ = drain(t, svc, renewed, p)
	require.Equal(t, []int{42}, eventNs(t, evs))
}

func testEpochChangesWhenRecreated(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	_, pos := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	oldEpoch, oldToken := svc.Epoch(), devicesync.FormatToDevice(svc.Epoch(), pos)
	b.Close()

	e.h.Recreate(t, e.URL)
	b2 := e.Open(Options{})
	svc2 := Service(b2, server)
	require.NotEqual(t, oldEpoch, svc2.Epoch(), "a recreated database has a new epoch")
	dev2 := mkDevice(t, b2, bob, "B1")
	for i := range 3 {
		accept(t, b2, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(10+i)))
	}
	p, err := devicesync.ParseToDevice(svc2.Epoch(), dev2, oldToken)
	require.NoError(t, err)
	require.Equal(t, inbox.Position{NID: dev2.NID}, p, "a token of another epoch acknowledges nothing")
	evs, _ := drain(t, svc2, dev2, p)
	require.Equal(t, []int{10, 11, 12}, eventNs(t, evs))
}

func testAckIsNextSince(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	for i := range 250 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	start := inbox.Position{NID: dev.NID}
	b1, err := svc.Sync(ctx(t), dev, start, 100)
	require.NoError(t, err)
	require.Equal(t, seq(0, 100), eventNs(t, b1.Events))
	require.True(t, b1.Limited, "more are pending after the first 100")

	b2, err := svc.Sync(ctx(t), dev, b1.Next, 100)
	require.NoError(t, err)
	require.Equal(t, seq(100, 200), eventNs(t, b2.Events))
	require.True(t, b2.Limited)

	// The response to b1.Next was lost: the same since gets the same batch.
	again, err := svc.Sync(ctx(t), dev, b1.Next, 100)
	require.NoError(t, err)
	require.Equal(t, seq(100, 200), eventNs(t, again.Events), "a reused since returns the same messages")
	require.Equal(t, b2.Next, again.Next)

	b3, err := svc.Sync(ctx(t), dev, b2.Next, 100)
	require.NoError(t, err)
	require.Equal(t, seq(200, 250), eventNs(t, b3.Events))
	require.False(t, b3.Limited)

	// A caller's smaller limit is honoured.
	for i := range 5 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint("x", i)), to(bob, "B1", content(300+i)))
	}
	b4, err := svc.Sync(ctx(t), dev, b3.Next, 2)
	require.NoError(t, err)
	require.Equal(t, []int{300, 301}, eventNs(t, b4.Events))
	require.True(t, b4.Limited)

	// Acknowledging deletes exactly what was delivered.
	res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, AckLo: b4.Next.Lo, AckHi: b4.Next.Hi, Limit: 100})
	require.NoError(t, err)
	require.Equal(t, 2, res.Acked)
	require.Len(t, res.Messages, 3)
}

// A since above every position the inbox issued is refused before anything
// is deleted: honouring it would delete messages never delivered and hide
// those sent next.
func testSinceNeverIssued(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	other := mkDevice(t, b, carol, "C1")
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	accept(t, b, txn(alice, "A1", "m.test", "carol"), to(carol, "C1", content(99)))
	first, err := svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 1)
	require.NoError(t, err)
	require.Equal(t, []int{0}, eventNs(t, first.Events))
	// Carol's message holds the highest position issued so far.
	top, err := svc.Sync(ctx(t), other, inbox.Position{NID: other.NID}, 100)
	require.NoError(t, err)
	highest := top.Next.Hi

	for _, since := range []inbox.Position{
		{NID: dev.NID, Lo: first.Next.Lo, Hi: 99_999_999}, // acknowledges a range
		{NID: dev.NID, Lo: 99_999_999, Hi: 99_999_999},    // acknowledges nothing, reads above
		{NID: dev.NID, Lo: 0, Hi: highest + 1},
	} {
		_, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, AckLo: since.Lo, AckHi: since.Hi, Limit: 100})
		require.ErrorIs(t, err, inbox.ErrNotIssued, "since %+v", since)
		_, err = svc.Sync(ctx(t), dev, since, 100)
		e, ok := matrix.AsError(err)
		require.True(t, ok, "the service answers a Matrix error: %v", err)
		require.Equal(t, matrix.InvalidParam, e.Code)
	}
	all, err := svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 100)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2}, eventNs(t, all.Events), "nothing was deleted")

	// The highest position issued is a valid since, though another device's
	// message holds it: it acknowledges everything of this device below it.
	res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, AckLo: 0, AckHi: highest, Limit: 100})
	require.NoError(t, err)
	require.Equal(t, 3, res.Acked)
}

func testRecipients(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	var aliceDevs []inbox.Recipient
	for _, id := range []string{"A1", "A2", "A3"} {
		aliceDevs = append(aliceDevs, mkDevice(t, b, alice, id))
	}
	mkDevice(t, b, bob, "B1")

	res := accept(t, b, txn(bob, "B1", "m.test", "star"), inbox.Messages{alice: {"*": content(1)}})
	require.Equal(t, 3, res.Delivered, "* reaches every device of the user")
	require.Zero(t, res.Unknown)

	res = accept(t, b, txn(bob, "B1", "m.test", "mixed"), inbox.Messages{alice: {"*": content(2), "A1": content(3)}})
	require.Equal(t, 1, res.Delivered, "* next to another id is just an unknown device id")

	res = accept(t, b, txn(bob, "B1", "m.test", "unknown"), inbox.Messages{
		"@nobody:example.org": {"X": content(4)}, alice: {"NOPE": content(5)}, "@ghost:example.org": {"*": content(6)},
	})
	require.Zero(t, res.Delivered)
	require.Equal(t, 3, res.Unknown, "unknown users and devices are dropped, not an error")

	want := map[int64][]int{aliceDevs[0].NID: {1, 3}, aliceDevs[1].NID: {1}, aliceDevs[2].NID: {1}}
	for _, d := range aliceDevs {
		evs, _ := drain(t, svc, d, inbox.Position{NID: d.NID})
		require.Equal(t, want[d.NID], eventNs(t, evs), "device %d", d.NID)
	}
}

func testRemoteOutbox(t *testing.T, e *Env) {
	b := e.Open(Options{})
	res := accept(t, b, txn(alice, "A1", "m.room_key", "r1"), inbox.Messages{
		"@carol:remote.test": {"*": content(1)},
		"@dave:remote.test":  {"D1": content(2), "D2": content(3)},
		"@erin:other.test":   {"E1": content(4)},
	})
	require.Equal(t, 2, res.Queued)
	q, err := b.Inbox().PeekOutbox(ctx(t), "remote.test", 10)
	require.NoError(t, err)
	require.Len(t, q, 1)
	var edu struct {
		EDUType string `json:"edu_type"`
		Content struct {
			Sender    string                                `json:"sender"`
			Type      string                                `json:"type"`
			MessageID string                                `json:"message_id"`
			Messages  map[string]map[string]json.RawMessage `json:"messages"`
		} `json:"content"`
	}
	require.NoError(t, json.Unmarshal(q[0].EDU, &edu))
	require.Equal(t, "m.direct_to_device", edu.EDUType)
	require.Equal(t, alice, edu.Content.Sender)
	require.Equal(t, "m.room_key", edu.Content.Type)
	require.Equal(t, q[0].MessageID, edu.Content.MessageID)
	require.Len(t, edu.Content.MessageID, 32)
	require.Contains(t, edu.Content.Messages["@carol:remote.test"], "*", "* for a remote user is forwarded unexpanded")
	require.Len(t, edu.Content.Messages["@dave:remote.test"], 2)
	other, err := b.Inbox().PeekOutbox(ctx(t), "other.test", 10)
	require.NoError(t, err)
	require.Len(t, other, 1)
}

func testWakeUpOnCommit(t *testing.T, e *Env) {
	hubA, hubB := wakeup.NewHub(), wakeup.NewHub()
	a := e.Open(Options{Hub: hubA})
	watcher, watchHub := a, hubA
	if e.h.MultiInstance {
		watcher, watchHub = e.Open(Options{Hub: hubB}), hubB
	}
	_ = watcher
	dev := mkDevice(t, a, bob, "B1")
	w := watchHub.Register(wakeup.DeviceKey(dev.NID))
	defer w.Close()
	drainSignal(w)
	accept(t, a, txn(alice, "A1", "m.test", "w"), to(bob, "B1", content(1)))
	awaitSignal(t, w, "a commit for the device wakes its waiter (on every instance)")

	q := watchHub.Register(wakeup.OutboxKey("remote.test"))
	defer q.Close()
	drainSignal(q)
	accept(t, a, txn(alice, "A1", "m.test", "q"), to("@x:remote.test", "X", content(1)))
	awaitSignal(t, q, "queuing EDUs wakes the destination's sender")

	drainSignal(w)
	_, err := a.Devices().DeleteDevice(ctx(t), bob, "B1")
	require.NoError(t, err)
	awaitSignal(t, w, "deleting a device wakes its waiters")
}

// drainSignal discards signals from listener (re)connects before the test's
// own action.
func drainSignal(w *wakeup.Waiter) {
	for {
		select {
		case <-w.C():
		case <-time.After(20 * time.Millisecond):
			return
		}
	}
}

func awaitSignal(t *testing.T, w *wakeup.Waiter, what string) {
	t.Helper()
	select {
	case <-w.C():
	case <-ctx(t).Done():
		t.Fatalf("no wake-up: %s", what)
	}
}

func testDeletedDeviceTakesInbox(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	hash := devicelists.HashToken("tok")
	d, _, err := b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1", TokenHash: hash})
	require.NoError(t, err)
	dev := inbox.Recipient{UserID: bob, NID: d.NID}
	for i := range 25 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	_, err = b.Devices().DeleteDevice(ctx(t), bob, "B1")
	require.NoError(t, err)
	_, err = b.Devices().DeleteDevice(ctx(t), bob, "B1")
	require.ErrorIs(t, err, devicelists.ErrNotFound)

	_, err = b.Devices().DeviceByToken(ctx(t), hash)
	require.ErrorIs(t, err, devicelists.ErrNotFound, "the token stops working at once")
	_, err = b.Devices().Device(ctx(t), bob, "B1")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	_, err = svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 100)
	require.ErrorIs(t, err, inbox.ErrDeviceGone)
	res := accept(t, b, txn(alice, "A1", "m.test", "late"), to(bob, "B1", content(99)))
	require.Zero(t, res.Delivered, "nothing is delivered to a deleted device")

	tombs, err := b.Devices().Tombstones(ctx(t), 10)
	require.NoError(t, err)
	require.Len(t, tombs, 1)
	require.Equal(t, d.NID, tombs[0].NID)

	// The purge runs in bounded batches with a moving lower bound.
	var after int64
	var counts []int
	for {
		n, last, err := b.Inbox().PurgeDevice(ctx(t), dev, after, 10)
		require.NoError(t, err)
		counts = append(counts, n)
		if n == 0 {
			break
		}
		after = last
	}
	require.Equal(t, []int{10, 10, 5, 0}, counts)
	require.NoError(t, b.Devices().ForgetTombstone(ctx(t), d.NID))
	tombs, err = b.Devices().Tombstones(ctx(t), 10)
	require.NoError(t, err)
	require.Empty(t, tombs)

	renewed := mkDevice(t, b, bob, "B1")
	evs, _ := drain(t, svc, renewed, inbox.Position{NID: renewed.NID})
	require.Empty(t, evs, "a re-created device starts empty")
	accept(t, b, txn(alice, "A1", "m.test", "new"), to(bob, "B1", content(7)))
	evs, _ = drain(t, svc, renewed, inbox.Position{NID: renewed.NID})
	require.Equal(t, []int{7}, eventNs(t, evs))
}

// testSendRacingDelete: a send that has resolved the device holds its
// transaction open while the device is deleted, purged and forgotten. Send and
// delete must serialize on the device, so the send's row can never land after
// the purge and outlive its device.
func testSendRacingDelete(t *testing.T, e *Env) {
	entered, release := make(chan struct{}), make(chan struct{})
	b := e.Open(Options{Hooks: inbox.Hooks{BeforeAcceptCommit: func(_ context.Context, a *inbox.Accept) error {
		if a.Txn.TxnID == "racing" {
			close(entered)
			<-release
		}
		return nil
	}}})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	sent := make(chan inbox.AcceptResult, 1)
	go func() { sent <- accept(t, b, txn(alice, "A1", "m.test", "racing"), to(bob, "B1", content(1))) }()
	<-entered
	deleted := make(chan struct{})
	go func() {
		defer close(deleted)
		_, err := b.Devices().DeleteDevice(ctx(t), bob, "B1")
		require.NoError(t, err)
		require.NoError(t, svc.PurgeDevice(ctx(t), dev))
		require.NoError(t, b.Devices().ForgetTombstone(ctx(t), dev.NID))
	}()
	waitFor(t, "the delete to finish or wait for the send", func() bool {
		select {
		case <-deleted:
			return true
		default:
			return e.h.WaitingWriters(t, b) >= 1
		}
	})
	close(release)
	<-sent
	<-deleted
	n, _, err := b.Inbox().PurgeDevice(ctx(t), dev, 0, 1000)
	require.NoError(t, err)
	require.Zero(t, n, "a row outlived its deleted and purged device")
}

func testPruneTxns(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	n, err := b.Inbox().PruneTxns(ctx(t), time.Now().Add(-time.Hour), 10)
	require.NoError(t, err)
	require.Zero(t, n, "young records are kept")
	n, err = b.Inbox().PruneTxns(ctx(t), time.Now().Add(time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, 2, n, "pruning is bounded by its limit")
	n, err = b.Inbox().PruneTxns(ctx(t), time.Now().Add(time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	res := accept(t, b, txn(alice, "A1", "m.test", "0"), to(bob, "B1", content(9)))
	require.False(t, res.Duplicate, "a pruned record no longer deduplicates")
	evs, _ := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{0, 1, 2, 9}, eventNs(t, evs))
}

func testExpireMessages(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	n, err := b.Inbox().ExpireMessages(ctx(t), time.Now().Add(-time.Hour), 100)
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = b.Inbox().ExpireMessages(ctx(t), time.Now().Add(time.Hour), 2)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	evs, _ := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{2}, eventNs(t, evs), "the oldest expire first")
}

func testBacklog(t *testing.T, e *Env) {
	b := e.Open(Options{})
	bl, err := b.Inbox().Backlog(ctx(t))
	require.NoError(t, err)
	require.Zero(t, bl.Pending)
	require.True(t, bl.Oldest.IsZero())
	mkDevice(t, b, bob, "B1")
	before := time.Now().Add(-time.Minute)
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), to(bob, "B1", content(i)))
	}
	bl, err = b.Inbox().Backlog(ctx(t))
	require.NoError(t, err)
	require.EqualValues(t, 3, bl.Pending)
	require.True(t, bl.Oldest.After(before) && bl.Oldest.Before(time.Now().Add(time.Minute)), "oldest %v", bl.Oldest)
}

func testDurable(t *testing.T, e *Env) {
	e.h.Durable(t, e.Open(Options{}))
}

// testRestartKeepsEpochAndPositions covers the "restart" of invariant 4: a
// process that closes the database and opens it again keeps its epoch (the
// tokens it handed out stay valid) and issues positions and device nids
// above every earlier one, even once the inbox is empty and the newest
// device is forgotten (a store numbering from the largest surviving row
// would reuse them).
func testRestartKeepsEpochAndPositions(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	gone := mkDevice(t, b, bob, "B2")
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint(i)), inbox.Messages{bob: {"*": content(i)}})
	}
	evs, pos := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Len(t, evs, 3)
	_, goneLast := drain(t, svc, gone, inbox.Position{NID: gone.NID})
	_, err := b.Devices().DeleteDevice(ctx(t), bob, "B2")
	require.NoError(t, err)
	require.NoError(t, svc.PurgeDevice(ctx(t), gone))
	require.NoError(t, b.Devices().ForgetTombstone(ctx(t), gone.NID))
	epoch, token := svc.Epoch(), devicesync.FormatToDevice(svc.Epoch(), pos)
	b.Close()

	b2 := e.Open(Options{})
	svc2 := Service(b2, server)
	require.Equal(t, epoch, svc2.Epoch(), "reopening the same database keeps its epoch")
	p, err := devicesync.ParseToDevice(svc2.Epoch(), dev, token)
	require.NoError(t, err)
	require.Equal(t, pos, p, "a token from before the restart still acknowledges")

	again := mkDevice(t, b2, bob, "B2")
	require.Greater(t, again.NID, gone.NID, "a device nid is never issued twice, across a restart")
	accept(t, b2, txn(alice, "A1", "m.test", "after"), inbox.Messages{bob: {"*": content(9)}})
	for _, d := range []struct {
		rec   inbox.Recipient
		since inbox.Position
	}{{dev, pos}, {again, inbox.Position{NID: again.NID}}} {
		res, err := b2.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: d.rec, AckLo: d.since.Lo, AckHi: d.since.Hi, Limit: 100})
		require.NoError(t, err)
		require.Len(t, res.Messages, 1)
		require.Greater(t, res.Messages[0].Pos, max(pos.Hi, goneLast.Hi), "positions grow past every earlier one, across a restart")
	}
}

// testConcurrentSendsAndSyncs drives invariant 3 under load: several senders
// write to one device while its reader syncs and acknowledges as fast as it
// can. Whatever interleaving happens, every message arrives exactly once,
// each sender's messages in the order they were sent.
func testConcurrentSendsAndSyncs(t *testing.T, e *Env) {
	instances := []storage.Backend{e.Open(Options{})}
	if e.h.MultiInstance {
		instances = append(instances, e.Open(Options{}))
	}
	dev := mkDevice(t, instances[0], bob, "B1")
	mkDevice(t, instances[0], carol, "C1")
	const senders, perSender = 4, 40
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() {
			b := instances[w%len(instances)]
			for i := range perSender {
				// Fan out to a second device too, so writers overlap on
				// more than the device under test.
				msgs := inbox.Messages{bob: {"B1": content(w*1000 + i)}, carol: {"C1": content(i)}}
				accept(t, b, txn(alice, fmt.Sprint("A", w), "m.test", fmt.Sprint(i)), msgs)
			}
		})
	}
	sendersDone := make(chan struct{})
	go func() { wg.Wait(); close(sendersDone) }()

	svc := Service(instances[len(instances)-1], server)
	var got []int
	pos := inbox.Position{NID: dev.NID}
	for done := false; !done; {
		select {
		case <-sendersDone:
			done = true // one more drain below picks up the rest
		default:
		}
		batch, err := svc.Sync(ctx(t), dev, pos, 7)
		require.NoError(t, err)
		got = append(got, eventNs(t, batch.Events)...)
		pos = batch.Next
	}
	rest, _ := drain(t, svc, dev, pos)
	got = append(got, eventNs(t, rest)...)

	require.Len(t, got, senders*perSender, "every message arrives exactly once")
	next := make([]int, senders)
	for _, n := range got {
		w, i := n/1000, n%1000
		require.Equal(t, next[w], i, "sender %d's messages arrive in order, once each", w)
		next[w]++
	}
}
