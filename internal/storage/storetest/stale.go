package storetest

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
)

// MSC3944 conformance: stale requests dropped at accept time.

// req is a key or secret request content; n identifies it in eventNs.
func req(action, requestID, requestingDevice string, n int) json.RawMessage {
	b, err := json.Marshal(map[string]any{"action": action, "request_id": requestID, "requesting_device_id": requestingDevice, "n": n})
	if err != nil {
		panic(err)
	}
	return b
}

// verif is a verification request or cancel content.
func verif(transactionID string, n int) json.RawMessage {
	b, err := json.Marshal(map[string]any{"transaction_id": transactionID, "from_device": "A1", "methods": []string{"m.sas.v1"}, "code": "m.user", "n": n})
	if err != nil {
		panic(err)
	}
	return b
}

var staleTxn atomic.Int64

// send stores one message from sender's device A1 with a fresh txn id.
func send(t *testing.T, b storage.Backend, sender, eventType string, msgs inbox.Messages) inbox.AcceptResult {
	t.Helper()
	return accept(t, b, txn(sender, "A1", eventType, fmt.Sprintf("stale-%d", staleTxn.Add(1))), msgs)
}

// ackAll syncs until nothing is pending and returns the events (but the
// backlog's) and the position.
func ackAll(t *testing.T, svc *inbox.Service, dev inbox.Recipient, pos inbox.Position) ([]int, inbox.Position) {
	t.Helper()
	evs, pos := drain(t, svc, dev, pos)
	var out []int
	for _, n := range eventNs(t, evs) {
		if n < backlogN {
			out = append(out, n)
		}
	}
	return out, pos
}

// backlogN numbers the backlog's messages, which ackAll leaves out.
const backlogN = 1_000_000

// backlog puts more than inbox.SeenHorizon messages in front of what comes
// next for a device, as a device offline for a while has: what follows can
// not have been given to it yet.
func backlog(t *testing.T, b storage.Backend, user, device string) {
	t.Helper()
	for i := range inbox.SeenHorizon + 5 {
		send(t, b, carol, "m.backlog", to(user, device, content(backlogN+i)))
	}
}

func testStaleKeyRequestCancelled(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	const krq = inbox.TypeRoomKeyRequest

	// A request the device was given but has not acknowledged: cancelled,
	// the request goes but the cancellation is delivered, so the device
	// does not keep a request whose cancellation it lost.
	send(t, b, alice, krq, to(bob, "B1", req("request", "r1", "A1", 1)))
	bt, err := svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 100)
	require.NoError(t, err)
	require.Equal(t, []int{1}, eventNs(t, bt.Events))
	res := send(t, b, alice, krq, to(bob, "B1", req("request_cancellation", "r1", "A1", 2)))
	require.Equal(t, 1, res.Delivered)
	require.Equal(t, map[string]int{inbox.DropKeyRequestCancelled: 1}, res.Dropped)
	got, pos := ackAll(t, svc, dev, bt.Next)
	require.Equal(t, []int{2}, got)

	// Behind a backlog: request, other traffic, cancellation; both go, the
	// message between them stays.
	backlog(t, b, bob, "B1")
	send(t, b, alice, krq, to(bob, "B1", req("request", "r2", "A1", 3)))
	send(t, b, alice, "m.test", to(bob, "B1", content(4)))
	res = send(t, b, alice, krq, to(bob, "B1", req("request_cancellation", "r2", "A1", 5)))
	require.Equal(t, 0, res.Delivered)
	require.Equal(t, map[string]int{inbox.DropKeyRequestCancelled: 2}, res.Dropped)

	// The device acknowledges part of the backlog meanwhile.
	bt, err = svc.Sync(ctx(t), dev, pos, 2)
	require.NoError(t, err)
	bt, err = svc.Sync(ctx(t), dev, bt.Next, 2)
	require.NoError(t, err)
	pos = bt.Next

	// A cancellation of an acknowledged request removes nothing: kept.
	res = send(t, b, alice, krq, to(bob, "B1", req("request_cancellation", "r1", "A1", 6)))
	require.Equal(t, 1, res.Delivered)
	require.Empty(t, res.Dropped)
	// The request sent again after its cancellation is kept.
	res = send(t, b, alice, krq, to(bob, "B1", req("request", "r2", "A1", 7)))
	require.Equal(t, 1, res.Delivered)
	require.Empty(t, res.Dropped)
	// Another sender, another requesting device: not the same request.
	send(t, b, alice, krq, to(bob, "B1", req("request", "r3", "A1", 8)))
	send(t, b, carol, krq, to(bob, "B1", req("request_cancellation", "r3", "A1", 9)))
	send(t, b, alice, krq, to(bob, "B1", req("request_cancellation", "r3", "A2", 10)))
	// m.room.encrypted is never inspected.
	send(t, b, alice, "m.room.encrypted", to(bob, "B1", req("request_cancellation", "r3", "A1", 11)))
	got, pos = ackAll(t, svc, dev, pos)
	require.Equal(t, []int{4, 6, 7, 8, 9, 10, 11}, got)

	// Cancelled after everything was acknowledged: nothing to drop.
	res = send(t, b, alice, krq, to(bob, "B1", req("request_cancellation", "r3", "A1", 12)))
	require.Equal(t, 1, res.Delivered)
	got, _ = ackAll(t, svc, dev, pos)
	require.Equal(t, []int{12}, got)
}

func testStaleKeyRequestRepeated(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	b1 := mkDevice(t, b, bob, "B1")
	b2 := mkDevice(t, b, bob, "B2")
	const krq = inbox.TypeRoomKeyRequest

	send(t, b, alice, krq, to(bob, "B1", req("request", "r1", "A1", 1)))
	send(t, b, alice, "m.test", inbox.Messages{bob: {"*": content(2)}})
	send(t, b, alice, krq, to(bob, "B2", req("request", "r1", "A1", 3)))
	send(t, b, carol, krq, to(bob, "B1", req("request", "r1", "A1", 4)))
	// B2 acknowledges everything it has so far.
	got, p2 := ackAll(t, svc, b2, inbox.Position{NID: b2.NID})
	require.Equal(t, []int{2, 3}, got)

	// The same request again, to every device: B1's pending copy goes; B2
	// acknowledged its copy, so there is nothing to replace.
	res := send(t, b, alice, krq, inbox.Messages{bob: {"*": req("request", "r1", "A1", 5)}})
	require.Equal(t, 2, res.Delivered)
	require.Equal(t, map[string]int{inbox.DropKeyRequestRepeated: 1}, res.Dropped)
	res = send(t, b, alice, krq, inbox.Messages{bob: {"*": req("request", "r1", "A1", 6)}})
	require.Equal(t, 2, res.Delivered)
	require.Equal(t, map[string]int{inbox.DropKeyRequestRepeated: 2}, res.Dropped)

	got, _ = ackAll(t, svc, b1, inbox.Position{NID: b1.NID})
	require.Equal(t, []int{2, 4, 6}, got, "only the newest copy is kept; carol's is another request")
	got, _ = ackAll(t, svc, b2, p2)
	require.Equal(t, []int{6}, got)
}

func testStaleSecretRequestCancelled(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	const srq = inbox.TypeSecretRequest

	backlog(t, b, bob, "B1")
	send(t, b, alice, srq, to(bob, "B1", req("request", "s1", "A1", 1)))
	send(t, b, alice, srq, to(bob, "B1", req("request", "s2", "A1", 2)))
	res := send(t, b, alice, srq, to(bob, "B1", req("request_cancellation", "s1", "A1", 3)))
	require.Equal(t, 0, res.Delivered)
	require.Equal(t, map[string]int{inbox.DropSecretRequestCancelled: 2}, res.Dropped)
	// Secret requests sent again are not deduplicated.
	send(t, b, alice, srq, to(bob, "B1", req("request", "s2", "A1", 4)))
	// Re-requested after the cancellation: kept.
	send(t, b, alice, srq, to(bob, "B1", req("request", "s1", "A1", 5)))
	got, pos := ackAll(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{2, 4, 5}, got)
	res = send(t, b, alice, srq, to(bob, "B1", req("request_cancellation", "s1", "A1", 6)))
	require.Equal(t, 1, res.Delivered, "its request was acknowledged: the cancellation is delivered")
	got, _ = ackAll(t, svc, dev, pos)
	require.Equal(t, []int{6}, got)
}

func testStaleVerificationCancelled(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")

	send(t, b, alice, inbox.TypeVerificationRequest, to(bob, "B1", verif("t1", 1)))
	send(t, b, carol, inbox.TypeVerificationRequest, to(bob, "B1", verif("t2", 2)))
	send(t, b, alice, "m.test", to(bob, "B1", content(3)))
	bt, err := svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 1)
	require.NoError(t, err)
	require.Equal(t, []int{1}, eventNs(t, bt.Events))
	// Acknowledged 1 with this sync: it is gone, so its cancel stays.
	bt, err = svc.Sync(ctx(t), dev, bt.Next, 1)
	require.NoError(t, err)
	require.Equal(t, []int{2}, eventNs(t, bt.Events))
	pos := bt.Next
	res := send(t, b, alice, inbox.TypeVerificationCancel, to(bob, "B1", verif("t1", 4)))
	require.Equal(t, 1, res.Delivered)
	require.Empty(t, res.Dropped)

	backlog(t, b, bob, "B1")
	send(t, b, alice, inbox.TypeVerificationRequest, to(bob, "B1", verif("t3", 5)))
	res = send(t, b, alice, inbox.TypeVerificationCancel, to(bob, "B1", verif("t3", 6)))
	require.Equal(t, 0, res.Delivered)
	require.Equal(t, map[string]int{inbox.DropVerificationCancelled: 2}, res.Dropped)
	// Another sender's cancel does not touch carol's request.
	send(t, b, carol, inbox.TypeVerificationRequest, to(bob, "B1", verif("t4", 7)))
	send(t, b, alice, inbox.TypeVerificationCancel, to(bob, "B1", verif("t4", 8)))
	got, _ := ackAll(t, svc, dev, pos)
	require.Equal(t, []int{3, 4, 7, 8}, got)
}

func testStaleRemote(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	const zed = "@zed:remote.test"
	const krq = inbox.TypeRoomKeyRequest
	remote := func(id, eventType string, c json.RawMessage) *inbox.RemoteAccept {
		r, err := inbox.BuildRemoteAccept(server, "remote.test", id, zed, eventType, to(bob, "B1", c))
		require.NoError(t, err)
		return r
	}
	// Request and cancellation in one inbound transaction, and across two;
	// a local send of the same ids is another sender's.
	backlog(t, b, bob, "B1")
	_, err := svc.AcceptRemote(ctx(t), []*inbox.RemoteAccept{remote("m1", krq, req("request", "r1", "Z1", 1))})
	require.NoError(t, err)
	send(t, b, alice, krq, to(bob, "B1", req("request", "r2", "Z1", 2)))
	res, err := svc.AcceptRemote(ctx(t), []*inbox.RemoteAccept{
		remote("m2", krq, req("request", "r2", "Z1", 3)),
		remote("m3", krq, req("request_cancellation", "r2", "Z1", 4)),
		remote("m4", krq, req("request_cancellation", "r1", "Z1", 5)),
		remote("m5", inbox.TypeVerificationRequest, verif("t1", 6)),
		remote("m6", "m.room.encrypted", verif("t1", 7)),
	})
	require.NoError(t, err)
	require.Equal(t, 1, res[0].Delivered, "written, then dropped by the next EDU, as if accepted apart")
	require.Equal(t, 0, res[1].Delivered)
	require.Equal(t, map[string]int{inbox.DropKeyRequestCancelled: 2}, res[1].Dropped)
	require.Equal(t, 0, res[2].Delivered)
	require.Equal(t, map[string]int{inbox.DropKeyRequestCancelled: 2}, res[2].Dropped)
	res, err = svc.AcceptRemote(ctx(t), []*inbox.RemoteAccept{remote("m7", inbox.TypeVerificationCancel, verif("t1", 8))})
	require.NoError(t, err)
	require.Equal(t, map[string]int{inbox.DropVerificationCancelled: 2}, res[0].Dropped)
	got, _ := ackAll(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{2, 7}, got)
}

// testStaleConcurrent sends request/cancellation pairs from many senders at
// once (grouped accepts on PostgreSQL) while the device syncs and
// acknowledges throughout: every other message arrives once, in order.
func testStaleConcurrent(t *testing.T, e *Env) {
	b := e.Open(Options{})
	svc := Service(b, server)
	dev := mkDevice(t, b, bob, "B1")
	const senders, pairs = 8, 15
	done := make(chan struct{})
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sender := fmt.Sprintf("@s%d:example.org", s)
			for i := range pairs {
				id := fmt.Sprintf("r%d", i)
				send(t, b, sender, inbox.TypeRoomKeyRequest, to(bob, "B1", req("request", id, "A1", -1)))
				send(t, b, sender, "m.test", to(bob, "B1", content(s*1000+i)))
				send(t, b, sender, inbox.TypeRoomKeyRequest, to(bob, "B1", req("request_cancellation", id, "A1", -2)))
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	seen := map[int]bool{}
	next := make([]int, senders)
	pos := inbox.Position{NID: dev.NID}
	type reqKey struct{ sender, id string }
	requested := map[reqKey]bool{} // true: seen, its cancellation not yet
	check := func(evs []inbox.Event) {
		for _, ev := range evs {
			if ev.Type == inbox.TypeRoomKeyRequest {
				var c struct {
					Action    string `json:"action"`
					RequestID string `json:"request_id"`
				}
				require.NoError(t, json.Unmarshal(ev.Content, &c))
				k := reqKey{ev.Sender, c.RequestID}
				if c.Action == "request" {
					requested[k] = true
				} else if requested[k] {
					requested[k] = false
				}
				continue
			}
			n := eventNs(t, []inbox.Event{ev})[0]
			require.False(t, seen[n], "message %d delivered twice", n)
			seen[n] = true
			s, i := n/1000, n%1000
			require.Equal(t, next[s], i, "sender %d's messages in order", s)
			next[s]++
		}
	}
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		bt, err := svc.Sync(ctx(t), dev, pos, 7)
		require.NoError(t, err)
		check(bt.Events)
		pos = bt.Next
	}
	evs, _ := drain(t, svc, dev, pos)
	check(evs)
	require.Len(t, seen, senders*pairs)
	for k, open := range requested {
		require.False(t, open, "the device was given %v but never its cancellation", k)
	}
}
