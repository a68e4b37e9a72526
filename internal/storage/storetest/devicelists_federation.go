package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/wakeup"
)

const (
	ritaR = "@rita:remote.test"
	olafO = "@olaf:other.test"
	tomT  = "@tom:third.test"
)

// dlEDU is a queued device-list EDU, decoded.
type dlEDU struct {
	Type    string `json:"edu_type"`
	Content struct {
		UserID      string          `json:"user_id"`
		DeviceID    string          `json:"device_id"`
		StreamID    int64           `json:"stream_id"`
		PrevID      []int64         `json:"prev_id"`
		Deleted     bool            `json:"deleted"`
		DisplayName string          `json:"device_display_name"`
		Keys        json.RawMessage `json:"keys"`
		Master      json.RawMessage `json:"master_key"`
		SelfSigning json.RawMessage `json:"self_signing_key"`
	} `json:"content"`
}

func peekDL(t *testing.T, b storage.Backend, destination string) ([]devicelists.QueuedEDU, []dlEDU) {
	t.Helper()
	q, err := b.Devices().PeekOutbox(ctx(t), destination, 1000)
	require.NoError(t, err)
	out := make([]dlEDU, len(q))
	for i, e := range q {
		require.NoError(t, json.Unmarshal(e.EDU, &out[i]))
		require.Equal(t, out[i].Type, e.Type)
	}
	return q, out
}

func dlPositions(q []devicelists.QueuedEDU) []int64 {
	out := make([]int64, len(q))
	for i, e := range q {
		out[i] = e.Pos
	}
	return out
}

func crossKey(user, usage, key string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"user_id": user, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + key: key}})
	return b
}

// testDeviceListOutbox: a change of a local user's devices queues one
// m.device_list_update per server sharing a room with the user,
// in the transaction of the change, each naming the user's previous update;
// cross-signing changes queue m.signing_key_update; a change that rolls
// back queues nothing.
func testDeviceListOutbox(t *testing.T, e *Env) {
	var failAlice atomic.Bool
	hub := wakeup.NewHub()
	b := e.Open(Options{Hub: hub, DeviceHooks: devicelists.Hooks{AfterOutboxQueue: func(_ context.Context, user, _ string) error {
		if user == alice && failAlice.Load() {
			return errors.New("simulated failure")
		}
		return nil
	}}})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, ritaR, "join")
	member(t, dl, roomE, "@rolf:remote.test", "invite")
	member(t, dl, roomE, tomT, "leave")
	member(t, dl, roomPlain, alice, "join")
	member(t, dl, roomPlain, olafO, "join")
	member(t, dl, roomE2, carol, "join") // Carol shares no room with anyone remote
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE2))

	w := hub.Register(wakeup.OutboxKey(remote))
	defer w.Close()
	name := "Alice's phone"
	_, _, err := dl.PutDevice(ctx(t), alice, "A1", "", &name, keysFor(alice, "A1", "k1"))
	require.NoError(t, err)
	awaitSignal(t, w, "the sender hears of the queued EDU")
	h1 := head(t, dl)
	_, got := peekDL(t, b, remote)
	require.Len(t, got, 1, "one EDU per destination, however many of its users share the room")
	u := got[0]
	require.Equal(t, matrix.EDUDeviceListUpdate, u.Type)
	require.Equal(t, alice, u.Content.UserID)
	require.Equal(t, "A1", u.Content.DeviceID)
	require.Equal(t, h1, u.Content.StreamID, "stream_id is the device-list position of the change")
	require.Empty(t, u.Content.PrevID, "the user's first update names no prev_id")
	require.False(t, u.Content.Deleted)
	require.Empty(t, u.Content.DisplayName, "display names stay on this server unless the operator opts in")
	require.JSONEq(t, string(keysFor(alice, "A1", "k1")), string(u.Content.Keys))
	_, plain := peekDL(t, b, other)
	require.Len(t, plain, 1, "%s shares a plaintext room with Alice: it is told too", other)
	_, none := peekDL(t, b, "third.test")
	require.Empty(t, none, "third.test left the room: it shares none with Alice")

	putDevice(t, dl, alice, "A1", keysFor(alice, "A1", "k2"))
	h2 := head(t, dl)
	_, err = dl.DeleteDevice(ctx(t), alice, "A1")
	require.NoError(t, err)
	h3 := head(t, dl)
	_, got = peekDL(t, b, remote)
	require.Len(t, got, 3)
	require.Equal(t, []int64{h1}, got[1].Content.PrevID, "each update names the previous one")
	require.Equal(t, h2, got[1].Content.StreamID)
	require.Equal(t, []int64{h2}, got[2].Content.PrevID)
	require.Equal(t, h3, got[2].Content.StreamID)
	require.True(t, got[2].Content.Deleted)
	require.Nil(t, got[2].Content.Keys)

	// Cross-signing: the public keys are sent, the user-signing key is not;
	// neither moves the chain of device updates.
	master := crossKey(alice, "master", "M")
	require.NoError(t, dl.PutCrossSigning(ctx(t), alice, devicelists.CrossSigningKeys{Master: master}))
	require.NoError(t, dl.PutCrossSigning(ctx(t), alice, devicelists.CrossSigningKeys{UserSigning: crossKey(alice, "user_signing", "U")}))
	_, got = peekDL(t, b, remote)
	require.Len(t, got, 4, "a user-signing key change is not sent")
	require.Equal(t, matrix.EDUSigningKeyUpdate, got[3].Type)
	require.Equal(t, alice, got[3].Content.UserID)
	require.JSONEq(t, string(master), string(got[3].Content.Master))
	require.Nil(t, got[3].Content.SelfSigning)

	// A change that rolls back leaves neither a position nor an EDU, and
	// the chain goes on from the last committed update.
	failAlice.Store(true)
	_, _, err = dl.PutDevice(ctx(t), alice, "A2", "", nil, keysFor(alice, "A2", "k3"))
	require.Error(t, err)
	failAlice.Store(false)
	_, got = peekDL(t, b, remote)
	require.Len(t, got, 4, "nothing is queued for a change that rolled back")
	_, err = dl.Device(ctx(t), alice, "A2")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	putDevice(t, dl, alice, "A2", keysFor(alice, "A2", "k3"))
	_, got = peekDL(t, b, remote)
	require.Len(t, got, 5)
	require.Equal(t, []int64{h3}, got[4].Content.PrevID, "the rolled-back change is no link of the chain")

	// Users sharing no room with a remote user queue nothing; neither does
	// a remote user's membership.
	putDevice(t, dl, carol, "C1", keysFor(carol, "C1", "k"))
	dests, err := b.Devices().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{other, remote}, dests)

	// Once the remote server shares no room any more, nothing more goes
	// there.
	member(t, dl, roomE, ritaR, "leave")
	member(t, dl, roomE, "@rolf:remote.test", "leave")
	putDevice(t, dl, alice, "A3", keysFor(alice, "A3", "k"))
	_, got = peekDL(t, b, remote)
	require.Len(t, got, 5)
}

// testDeviceListOutboxAnyRoom: the server-server spec sends
// m.device_list_update to every server sharing a room with the user, not
// only an encrypted one: a server that cached Alice's list through a
// plaintext room must hear of her new device before that room turns
// encrypted. Local clients still count encrypted rooms only.
func testDeviceListOutboxAnyRoom(t *testing.T, e *Env) {
	const (
		eve   = "@eve:d.test"
		frank = "@frank:e.test"
	)
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomPlain, alice, "join")
	member(t, dl, roomPlain, eve, "join")
	member(t, dl, roomPlain, bob, "join")
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, frank, "join")
	from := head(t, dl)

	putDevice(t, dl, alice, "A1", keysFor(alice, "A1", "k1"))
	for _, d := range []string{"d.test", "e.test"} {
		_, got := peekDL(t, b, d)
		require.Len(t, got, 1, "%s shares a room with Alice: her new device is queued for it", d)
		require.Equal(t, alice, got[0].Content.UserID)
		require.Equal(t, "A1", got[0].Content.DeviceID)
	}
	dests, err := b.Devices().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{"d.test", "e.test"}, dests)

	// Cross-signing changes go the same way.
	require.NoError(t, dl.PutCrossSigning(ctx(t), alice, devicelists.CrossSigningKeys{Master: crossKey(alice, "master", "M")}))
	_, got := peekDL(t, b, "d.test")
	require.Len(t, got, 2)
	require.Equal(t, matrix.EDUSigningKeyUpdate, got[1].Type)

	// Bob shares only the plaintext room with Alice: her change is not his
	// client's business (device_lists.changed counts encrypted rooms).
	require.NotContains(t, changes(t, dl, bob, from, head(t, dl)).Changed, alice)

	// Once Eve leaves, d.test hears nothing more.
	member(t, dl, roomPlain, eve, "leave")
	putDevice(t, dl, alice, "A2", keysFor(alice, "A2", "k2"))
	_, got = peekDL(t, b, "d.test")
	require.Len(t, got, 2)
	_, got = peekDL(t, b, "e.test")
	require.Len(t, got, 3)

	// With --federation-device-names the EDU carries the display name.
	named := lists(b)
	named.SetFederationDeviceNames(true)
	name := "Alice's tablet"
	_, _, err = named.PutDevice(ctx(t), alice, "A3", "", &name, keysFor(alice, "A3", "k3"))
	require.NoError(t, err)
	_, got = peekDL(t, b, "e.test")
	require.Len(t, got, 4)
	require.Equal(t, name, got[3].Content.DisplayName)
}

// testDeviceListOutboxExactDelete: the sender's fenced finish and the feed's
// acknowledgement delete exactly the positions they name; expiry spares a
// stored transaction's rows.
func testDeviceListOutboxExactDelete(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, ritaR, "join")
	member(t, dl, roomE, olafO, "join")
	for i, d := range []string{"A1", "A2", "A3", "A4"} {
		putDevice(t, dl, alice, d, keysFor(alice, d, string(rune('a'+i))))
	}
	q, _ := peekDL(t, b, remote)
	qo, _ := peekDL(t, b, other)
	require.Len(t, q, 4)
	require.Len(t, qo, 4)
	td := queueRemote(t, b, remote, 1)

	s := b.Federation()
	l := acquire(t, s, remote, "h1", leaseFor)
	txn := &federation.StoredTxn{ID: "t1", EDUs: json.RawMessage(`[]`), OriginServerTS: 1, Items: []federation.TxnItem{
		{Source: devicelists.OutboxSource, Pos: q[0].Pos}, {Source: devicelists.OutboxSource, Pos: q[2].Pos},
		{Source: inbox.OutboxSource, Pos: td[0].Pos},
	}}
	require.NoError(t, s.SaveTxn(ctx(t), l, txn))

	got, err := b.Devices().ExpireOutbox(ctx(t), time.Now().Add(time.Hour), 1)
	require.NoError(t, err)
	require.Equal(t, []devicelists.DestinationCount{{Destination: other, Count: 1}}, got,
		"bounded, oldest first, and a stored transaction's rows are not expired under it")
	rest, _ := peekDL(t, b, remote)
	restO, _ := peekDL(t, b, other)
	require.Equal(t, dlPositions(q), dlPositions(rest))
	require.Equal(t, dlPositions(qo[1:]), dlPositions(restO))
	got, err = b.Devices().ExpireOutbox(ctx(t), time.Now().Add(-time.Hour), 100)
	require.NoError(t, err)
	require.Empty(t, got, "nothing is older than the cutoff")

	n, err := s.CompleteTxn(ctx(t), l, "t1")
	require.NoError(t, err)
	require.Equal(t, 3, n, "the fenced finish deletes the rows of both sources")
	rest, _ = peekDL(t, b, remote)
	require.Equal(t, []int64{q[1].Pos, q[3].Pos}, dlPositions(rest), "exactly the covered rows are gone")
	restO2, _ := peekDL(t, b, other)
	require.Equal(t, dlPositions(restO), dlPositions(restO2), "other destinations keep theirs")
	rest2, err := b.Inbox().PeekOutbox(ctx(t), remote, 10)
	require.NoError(t, err)
	require.Empty(t, rest2, "and the to-device row went with them")

	// DeleteOutbox: exactly the listed positions of the destination.
	byType, err := b.Devices().DeleteOutbox(ctx(t), remote, []int64{q[3].Pos, qo[3].Pos, q[3].Pos + 1_000_000})
	require.NoError(t, err)
	require.Equal(t, map[string]int{matrix.EDUDeviceListUpdate: 1}, byType, "a position of another destination is not deleted")
	left, _ := peekDL(t, b, remote)
	require.Equal(t, []int64{q[1].Pos}, dlPositions(left))
	bl, err := b.Devices().OutboxBacklog(ctx(t))
	require.NoError(t, err)
	require.EqualValues(t, 4, bl.Pending)
	require.False(t, bl.Oldest.IsZero())
	dests, err := b.Devices().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{other, remote}, dests)

	// Expire the rest: the queue ends empty.
	_, err = b.Devices().ExpireOutbox(ctx(t), time.Now().Add(time.Hour), 100)
	require.NoError(t, err)
	bl, err = b.Devices().OutboxBacklog(ctx(t))
	require.NoError(t, err)
	require.Zero(t, bl.Pending)
	require.True(t, bl.Oldest.IsZero())
	dests, err = b.Devices().OutboxDestinations(ctx(t))
	require.NoError(t, err)
	require.Empty(t, dests)
}

// testDeviceListOutboxOrder is invariant 3 for the device-list outbox: a
// change holds its transaction open after its EDU took its outbox position
// while another change of a user sharing a room with the same server runs
// and a sender reads; the sender must get every EDU once, in order.
func testDeviceListOutboxOrder(t *testing.T, e *Env) {
	entered, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	b := e.Open(Options{DeviceHooks: devicelists.Hooks{AfterOutboxQueue: func(_ context.Context, user, _ string) error {
		if user == alice && first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
		return nil
	}}})
	inst := b
	if e.h.MultiInstance {
		inst = e.Open(Options{})
	}
	dl, dl2 := lists(b), lists(inst)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	member(t, dl, roomE, ritaR, "join")

	var sent []string
	send := func() {
		q, got := peekDL(t, b, remote)
		if len(q) == 0 {
			return // (SQLite: a delete would queue behind the open change)
		}
		for _, u := range got {
			sent = append(sent, u.Content.UserID+"/"+u.Content.DeviceID)
		}
		_, err := b.Devices().DeleteOutbox(ctx(t), remote, dlPositions(q))
		require.NoError(t, err)
	}
	putDevice(t, dl, bob, "B0", keysFor(bob, "B0", "k"))
	send()

	aliceDone := make(chan struct{})
	go func() { defer close(aliceDone); putDevice(t, dl, alice, "A1", keysFor(alice, "A1", "k")) }()
	<-entered
	bobDone := make(chan struct{})
	go func() { defer close(bobDone); putDevice(t, dl2, bob, "B1", keysFor(bob, "B1", "k")) }()
	waitFor(t, "Bob's change to commit or wait", func() bool {
		select {
		case <-bobDone:
			return true
		default:
			return e.h.WaitingWriters(t, b) >= 1
		}
	})
	send() // while Alice's change is still open
	close(release)
	<-aliceDone
	<-bobDone
	send()
	send()
	require.Equal(t, []string{bob + "/B0", alice + "/A1", bob + "/B1"}, sent, "every EDU reaches the destination once, in commit order")
}

// rdl is a remote device list snapshot of rita's.
func rdl(stream int64, devices ...string) devicelists.RemoteDeviceList {
	l := devicelists.RemoteDeviceList{UserID: ritaR, StreamID: stream}
	for _, d := range devices {
		l.Devices = append(l.Devices, devicelists.DeviceKeys{UserID: ritaR, DeviceID: d, Keys: keysFor(ritaR, d, d)})
	}
	return l
}

func upd(stream int64, device string, prev ...int64) devicelists.RemoteUpdate {
	return devicelists.RemoteUpdate{UserID: ritaR, DeviceID: device, StreamID: stream, PrevIDs: prev, Keys: keysFor(ritaR, device, device)}
}

func cachedDevices(t *testing.T, b storage.Backend, user string) ([]string, bool) {
	t.Helper()
	m, err := b.Devices().RemoteDeviceLists(ctx(t), []string{user})
	require.NoError(t, err)
	l, ok := m[user]
	var ids []string
	for _, d := range l.Devices {
		ids = append(ids, d.DeviceID)
	}
	return ids, ok
}

func claim(t *testing.T, b storage.Backend) []string {
	t.Helper()
	jobs, err := b.Devices().ClaimResyncs(ctx(t), 100, time.Minute)
	require.NoError(t, err)
	var out []string
	for _, j := range jobs {
		out = append(out, j.UserID)
	}
	return out
}

// testResyncIfUnknownDevice: a to-device message naming a device the fresh
// cache of its sender lacks makes a resync due now; a known device, a user
// stale already (its backoff stands) or one not tracked change nothing.
func testResyncIfUnknownDevice(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	s := b.Devices()
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, ritaR, "join")
	require.Equal(t, []string{ritaR}, claim(t, b))
	_, err := s.CompleteResync(ctx(t), rdl(5, "R1"))
	require.NoError(t, err)
	_, fresh := cachedDevices(t, b, ritaR)
	require.True(t, fresh)

	marked, err := s.ResyncIfUnknownDevice(ctx(t), ritaR, "R1")
	require.NoError(t, err)
	require.False(t, marked, "R1 is cached")
	require.Empty(t, claim(t, b))

	marked, err = s.ResyncIfUnknownDevice(ctx(t), ritaR, "R2")
	require.NoError(t, err)
	require.True(t, marked, "R2 is not cached")
	_, fresh = cachedDevices(t, b, ritaR)
	require.False(t, fresh, "a stale cache is not answered from")
	require.Equal(t, []string{ritaR}, claim(t, b), "the resync is due now")
	require.NoError(t, s.FailResync(ctx(t), ritaR, 3, time.Hour))
	marked, err = s.ResyncIfUnknownDevice(ctx(t), ritaR, "R3")
	require.NoError(t, err)
	require.False(t, marked, "stale already: the backoff stands")
	require.Empty(t, claim(t, b))

	marked, err = s.ResyncIfUnknownDevice(ctx(t), olafO, "O1")
	require.NoError(t, err)
	require.False(t, marked, "nobody local shares a room with Olaf: not tracked")
}

// testRemoteDeviceListUpdates: the cache of a remote user is tracked from
// the moment they share an encrypted room with a local user, filled by a
// resync, kept by updates whose prev_id is known, marked stale by a gap,
// and replaced whole by the next resync; replays change nothing.
func testRemoteDeviceListUpdates(t *testing.T, e *Env) {
	hub := wakeup.NewHub()
	b := e.Open(Options{Hub: hub})
	dl := lists(b)
	s := b.Devices()
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")

	out, err := s.ApplyRemoteUpdate(ctx(t), upd(5, "R1", 4))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteIgnored, out, "nobody local shares a room with Rita yet")
	require.Empty(t, claim(t, b))

	member(t, dl, roomE, ritaR, "join")
	require.Equal(t, []string{ritaR}, claim(t, b), "a remote user who starts sharing is due for a resync")
	require.Empty(t, claim(t, b), "a claimed resync is not handed out twice")
	_, ok := cachedDevices(t, b, ritaR)
	require.False(t, ok, "no cache before the first resync")

	wa := hub.Register(wakeup.UserKey(alice))
	defer wa.Close()
	drainSignal(wa)
	h0 := head(t, dl)
	res, err := s.CompleteResync(ctx(t), rdl(10, "R1"))
	require.NoError(t, err)
	require.Equal(t, devicelists.ResyncResult{Tracked: true, Changed: true}, res)
	awaitSignal(t, wa, "Alice shares a room with Rita")
	h1 := head(t, dl)
	require.Equal(t, []string{ritaR}, changes(t, dl, alice, h0, h1).Changed, "a resync that changed the list is a position")
	ids, ok := cachedDevices(t, b, ritaR)
	require.True(t, ok)
	require.Equal(t, []string{"R1"}, ids)
	res, err = s.CompleteResync(ctx(t), rdl(10, "R1"))
	require.NoError(t, err)
	require.False(t, res.Changed)
	require.Equal(t, h1, head(t, dl), "a resync that found nothing new is no position")

	// An update whose prev_id is the cache's stream_id is applied.
	out, err = s.ApplyRemoteUpdate(ctx(t), upd(11, "R2", 10))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteApplied, out)
	awaitSignal(t, wa, "Rita's new device wakes Alice")
	h2 := head(t, dl)
	require.Equal(t, []string{ritaR}, changes(t, dl, alice, h1, h2).Changed)
	ids, _ = cachedDevices(t, b, ritaR)
	require.Equal(t, []string{"R1", "R2"}, ids)
	for _, replay := range []devicelists.RemoteUpdate{upd(11, "R2", 10), upd(9, "R9", 8), upd(10, "R1")} {
		out, err = s.ApplyRemoteUpdate(ctx(t), replay)
		require.NoError(t, err)
		require.Equal(t, devicelists.RemoteIgnored, out, "replayed or older updates change nothing: %+v", replay)
	}
	require.Equal(t, h2, head(t, dl))

	// Several prev_ids: each must be known.
	out, err = s.ApplyRemoteUpdate(ctx(t), upd(12, "R3", 11))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteApplied, out)
	del := upd(13, "R1", 11, 12)
	del.Deleted, del.Keys = true, nil
	out, err = s.ApplyRemoteUpdate(ctx(t), del)
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteApplied, out, "11 was applied, 12 is the cache's stream_id")
	ids, _ = cachedDevices(t, b, ritaR)
	require.Equal(t, []string{"R2", "R3"}, ids, "a deleted device leaves the cache")

	// A gap: an update naming a prev_id we never saw.
	out, err = s.ApplyRemoteUpdate(ctx(t), upd(15, "R5", 14))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteResync, out)
	_, ok = cachedDevices(t, b, ritaR)
	require.False(t, ok, "a stale cache is not served")
	out, err = s.ApplyRemoteUpdate(ctx(t), upd(16, "R6", 15))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteResync, out, "a stale cache takes no updates")
	out, err = s.ApplyRemoteUpdate(ctx(t), devicelists.RemoteUpdate{UserID: ritaR, DeviceID: "R7", StreamID: 17})
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteResync, out, "no prev_id at all is a gap")
	require.Equal(t, []string{ritaR}, claim(t, b))

	// A snapshot older than an update seen meanwhile leaves the user stale.
	res, err = s.CompleteResync(ctx(t), rdl(15, "R2", "R3", "R5"))
	require.NoError(t, err)
	require.True(t, res.StillStale)
	require.NoError(t, s.FailResync(ctx(t), ritaR, 1, 0))
	require.Equal(t, []string{ritaR}, claim(t, b))
	h3 := head(t, dl)
	res, err = s.CompleteResync(ctx(t), rdl(17, "R5", "R6", "R7"))
	require.NoError(t, err)
	require.Equal(t, devicelists.ResyncResult{Tracked: true, Changed: true}, res)
	require.Equal(t, []string{ritaR}, changes(t, dl, alice, h3, head(t, dl)).Changed)
	ids, ok = cachedDevices(t, b, ritaR)
	require.True(t, ok)
	require.Equal(t, []string{"R5", "R6", "R7"}, ids, "a resync replaces the whole list")
	out, err = s.ApplyRemoteUpdate(ctx(t), upd(18, "R8", 17))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteApplied, out, "updates apply again on top of the snapshot")

	// Cross-signing keys of a remote user.
	master := crossKey(ritaR, "master", "M")
	out, err = s.ApplyRemoteSigningKeys(ctx(t), ritaR, map[string]json.RawMessage{devicelists.MasterKey: master})
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteApplied, out)
	h4 := head(t, dl)
	out, err = s.ApplyRemoteSigningKeys(ctx(t), ritaR, map[string]json.RawMessage{devicelists.MasterKey: master})
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteIgnored, out, "the same keys again")
	require.Equal(t, h4, head(t, dl))
	m, err := s.RemoteDeviceLists(ctx(t), []string{ritaR, olafO})
	require.NoError(t, err)
	require.Len(t, m, 1)
	require.JSONEq(t, string(master), string(m[ritaR].MasterKey))
	require.EqualValues(t, 18, m[ritaR].StreamID)
	out, err = s.ApplyRemoteSigningKeys(ctx(t), olafO, map[string]json.RawMessage{devicelists.MasterKey: crossKey(olafO, "master", "O")})
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteIgnored, out, "keys of a user nobody local shares a room with are ignored")
	cs, err := s.CrossSigning(ctx(t), []string{olafO})
	require.NoError(t, err)
	require.Empty(t, cs)
}

// testRemoteDeviceListDropped: the cache of a remote user goes (devices,
// keys, state) as soon as no local user shares an encrypted room with them:
// when they leave, and when the last local user leaves. It comes back stale.
func testRemoteDeviceListDropped(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	s := b.Devices()
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE2))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE2, bob, "join")
	member(t, dl, roomE, ritaR, "join")
	member(t, dl, roomE2, ritaR, "join")
	member(t, dl, roomPlain, olafO, "join")
	member(t, dl, roomPlain, alice, "join")
	fill := func() {
		t.Helper()
		claim(t, b)
		res, err := s.CompleteResync(ctx(t), rdl(3, "R1"))
		require.NoError(t, err)
		require.True(t, res.Tracked)
		_, err = s.ApplyRemoteSigningKeys(ctx(t), ritaR, map[string]json.RawMessage{devicelists.MasterKey: crossKey(ritaR, "master", "M")})
		require.NoError(t, err)
	}
	count := func() int {
		n, err := s.RemoteUserCount(ctx(t))
		require.NoError(t, err)
		return n
	}
	fill()
	require.Equal(t, 1, count(), "a user of a plaintext room is not tracked")

	member(t, dl, roomE, ritaR, "leave")
	_, ok := cachedDevices(t, b, ritaR)
	require.True(t, ok, "Rita still shares a room with Bob")
	member(t, dl, roomE2, bob, "leave")
	require.Zero(t, count(), "the last local user left: Rita's cache is dropped")
	cs, err := s.CrossSigning(ctx(t), []string{ritaR})
	require.NoError(t, err)
	require.Empty(t, cs, "with her cross-signing keys")
	res, err := s.CompleteResync(ctx(t), rdl(4, "R1"))
	require.NoError(t, err)
	require.False(t, res.Tracked, "a resync finishing after the drop writes nothing")
	require.Zero(t, count())

	member(t, dl, roomE2, bob, "join")
	require.Equal(t, []string{ritaR}, claim(t, b), "sharing again: tracked and due at once")
	fill()
	member(t, dl, roomE2, ritaR, "ban")
	require.Zero(t, count(), "Rita left the last room she shared")

	// The sweep keeps what is shared and walks in bounded steps.
	member(t, dl, roomE2, ritaR, "join")
	member(t, dl, roomE2, "@rolf:remote.test", "join")
	member(t, dl, roomE2, tomT, "invite")
	require.Equal(t, 3, count())
	next, dropped, err := s.SweepRemoteUsers(ctx(t), "", 2)
	require.NoError(t, err)
	require.Zero(t, dropped)
	require.NotEmpty(t, next)
	next, dropped, err = s.SweepRemoteUsers(ctx(t), next, 2)
	require.NoError(t, err)
	require.Zero(t, dropped)
	require.Empty(t, next, "the end")
	require.Equal(t, 3, count())
}

// testRemoteResyncBackoff: a failed resync waits for its retry time, which
// outlives the claim; a new gap does not cut an existing backoff short.
func testRemoteResyncBackoff(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	s := b.Devices()
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, ritaR, "join")
	jobs, err := s.ClaimResyncs(ctx(t), 10, time.Minute)
	require.NoError(t, err)
	require.Equal(t, []devicelists.ResyncJob{{UserID: ritaR}}, jobs)
	require.NoError(t, s.FailResync(ctx(t), ritaR, 1, time.Hour))
	require.Empty(t, claim(t, b), "backing off")
	out, err := s.ApplyRemoteUpdate(ctx(t), upd(7, "R1", 6))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteResync, out)
	require.Empty(t, claim(t, b), "an update does not cut the backoff short")
	require.NoError(t, s.FailResync(ctx(t), ritaR, 2, -time.Second))
	jobs, err = s.ClaimResyncs(ctx(t), 10, time.Minute)
	require.NoError(t, err)
	require.Equal(t, []devicelists.ResyncJob{{UserID: ritaR, Failures: 2}}, jobs, "failures are persisted")
	res, err := s.CompleteResync(ctx(t), rdl(7, "R1"))
	require.NoError(t, err)
	require.False(t, res.StillStale)
	require.NoError(t, s.FailResync(ctx(t), ritaR, 5, -time.Second))
	require.Empty(t, claim(t, b), "a fresh cache is not resynced")

	// An update with a stream_id the server never reaches (a bogus one)
	// costs one extra resync, not a loop.
	out, err = s.ApplyRemoteUpdate(ctx(t), upd(1_000_000, "R2", 999_999))
	require.NoError(t, err)
	require.Equal(t, devicelists.RemoteResync, out)
	res, err = s.CompleteResync(ctx(t), rdl(8, "R1"))
	require.NoError(t, err)
	require.True(t, res.StillStale)
	res, err = s.CompleteResync(ctx(t), rdl(8, "R1"))
	require.NoError(t, err)
	require.False(t, res.StillStale)
	ids, ok := cachedDevices(t, b, ritaR)
	require.True(t, ok)
	require.Equal(t, []string{"R1"}, ids)
}

// testUserDeviceList: the snapshot GET /user/devices serves: devices with
// keys, the public cross-signing keys, and as stream_id the position of the
// user's last device update (what the next update names as prev_id).
func testUserDeviceList(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, ritaR, "join")
	l, err := b.Devices().UserDeviceList(ctx(t), alice)
	require.NoError(t, err)
	require.Zero(t, l.StreamID)
	require.Empty(t, l.Devices)

	name := "phone"
	_, _, err = dl.PutDevice(ctx(t), alice, "A2", "", &name, keysFor(alice, "A2", "k2"))
	require.NoError(t, err)
	putDevice(t, dl, alice, "A1", keysFor(alice, "A1", "k1"))
	putDevice(t, dl, alice, "A3", nil)
	h := head(t, dl)
	master, self := crossKey(alice, "master", "M"), crossKey(alice, "self_signing", "S")
	require.NoError(t, dl.PutCrossSigning(ctx(t), alice, devicelists.CrossSigningKeys{
		Master: master, SelfSigning: self, UserSigning: crossKey(alice, "user_signing", "U"),
	}))
	l, err = b.Devices().UserDeviceList(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, h, l.StreamID, "the last device update, not the cross-signing change")
	require.Len(t, l.Devices, 2, "devices without keys are not listed")
	require.Equal(t, "A1", l.Devices[0].DeviceID)
	require.Equal(t, "A2", l.Devices[1].DeviceID)
	require.Equal(t, name, l.Devices[1].DisplayName)
	require.JSONEq(t, string(master), string(l.MasterKey))
	require.JSONEq(t, string(self), string(l.SelfSigningKey))

	putDevice(t, dl, alice, "A4", keysFor(alice, "A4", "k4"))
	_, got := peekDL(t, b, remote)
	require.Equal(t, []int64{l.StreamID}, got[len(got)-1].Content.PrevID, "the next update names the snapshot's stream_id")
}
