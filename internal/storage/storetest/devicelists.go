package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/wakeup"
)

const (
	dave      = "@dave:example.org"
	remoteU   = "@rita:remote.test"
	roomE     = "!enc:example.org"
	roomE2    = "!enc2:example.org"
	roomPlain = "!plain:example.org"
)

// lists wraps a backend's device store in the devicelists service.
func lists(b storage.Backend) *devicelists.Service {
	return devicelists.New(b.Devices(), server, nil, nil)
}

func keysFor(user, device, curve string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"user_id":%q,"device_id":%q,"algorithms":["m.olm.v1.curve25519-aes-sha2"],"keys":{"curve25519:%s":%q}}`, user, device, device, curve))
}

var ordering atomic.Int64

func member(t *testing.T, dl *devicelists.Service, room, user, membership string) {
	t.Helper()
	so := ordering.Add(1)
	require.NoError(t, dl.SetMemberships(ctx(t), room, map[string]devicelists.MemberUpdate{user: {Membership: membership, StreamOrdering: &so}}))
}

func head(t *testing.T, dl *devicelists.Service) int64 {
	t.Helper()
	h, err := dl.Head(ctx(t))
	require.NoError(t, err)
	return h
}

func changes(t *testing.T, dl *devicelists.Service, user string, from, to int64) devicelists.Changes {
	t.Helper()
	c, err := dl.Changes(ctx(t), user, from, to)
	require.NoError(t, err)
	return c
}

func putDevice(t *testing.T, dl *devicelists.Service, user, device string, keys json.RawMessage) {
	t.Helper()
	_, _, err := dl.PutDevice(ctx(t), user, device, "", nil, keys)
	require.NoError(t, err)
}

func testDeviceListChangedAndLeft(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	member(t, dl, roomPlain, carol, "join")
	member(t, dl, roomPlain, bob, "join")
	h0 := head(t, dl)

	putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k1"))
	h1 := head(t, dl)
	require.Greater(t, h1, h0, "a new device is a device-list position")
	require.Equal(t, []string{bob}, changes(t, dl, alice, h0, h1).Changed, "Alice shares an encrypted room with Bob")
	require.Empty(t, changes(t, dl, carol, h0, h1).Changed, "Carol shares only a plaintext room with Bob")
	require.Equal(t, []string{bob}, changes(t, dl, bob, h0, h1).Changed, "a user sees their own new devices")

	putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k1"))
	require.Equal(t, h1, head(t, dl), "re-uploading the same keys is no change")
	putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k2"))
	h2 := head(t, dl)
	require.Equal(t, []string{bob}, changes(t, dl, alice, h1, h2).Changed, "new keys are a change")

	member(t, dl, roomE, bob, "leave")
	h3 := head(t, dl)
	c := changes(t, dl, alice, h2, h3)
	require.Equal(t, []string{bob}, c.Left, "Bob left the last shared encrypted room")
	require.Empty(t, c.Changed)
	c = changes(t, dl, bob, h2, h3)
	require.Equal(t, []string{alice}, c.Left, "and Bob no longer tracks Alice")

	putDevice(t, dl, bob, "B2", keysFor(bob, "B2", "k3"))
	h4 := head(t, dl)
	require.Empty(t, changes(t, dl, alice, h3, h4).Changed, "changes of a user no longer shared are not shown")

	member(t, dl, roomE, bob, "join")
	h5 := head(t, dl)
	c = changes(t, dl, alice, h4, h5)
	require.Equal(t, []string{bob}, c.Changed, "rejoining is a change")
	require.Empty(t, c.Left)

	// Over the whole window, a user is never both changed and left.
	c = changes(t, dl, alice, h0, h5)
	require.Equal(t, []string{bob}, c.Changed)
	require.Empty(t, c.Left)
}

func testInviteAndKnockShare(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	h0 := head(t, dl)
	member(t, dl, roomE, bob, "invite")
	member(t, dl, roomE, carol, "knock")
	member(t, dl, roomE, dave, "ban")
	h1 := head(t, dl)
	require.Equal(t, []string{bob, carol}, changes(t, dl, alice, h0, h1).Changed, "invited and knocking users are encrypted for")
	users, err := b.Devices().SharedUsers(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, []string{alice, bob, carol}, users)
}

func testMembershipOrdering(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	so := func(n int64) *int64 { return &n }
	set := func(user, m string, o int64) {
		require.NoError(t, dl.SetMemberships(ctx(t), roomE, map[string]devicelists.MemberUpdate{user: {Membership: m, StreamOrdering: so(o)}}))
	}
	set(alice, "join", 10)
	set(bob, "join", 20)
	h0 := head(t, dl)
	set(bob, "leave", 15) // older than the join: ignored
	set(bob, "join", 20)  // a retry: ignored
	require.Equal(t, h0, head(t, dl), "stale and repeated updates change nothing")
	users, err := b.Devices().SharedUsers(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, []string{alice, bob}, users)
	set(bob, "leave", 30)
	require.Equal(t, []string{bob}, changes(t, dl, alice, h0, head(t, dl)).Left)

	// The bulk form, for importing rooms that exist before todeviced does.
	require.NoError(t, dl.SetMemberships(ctx(t), roomE2, map[string]devicelists.MemberUpdate{
		alice: {Membership: "join", StreamOrdering: so(1)}, carol: {Membership: "join", StreamOrdering: so(2)}, remoteU: {Membership: "join", StreamOrdering: so(3)},
	}))
	h1 := head(t, dl)
	require.Equal(t, h1, head(t, dl))
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE2))
	h2 := head(t, dl)
	require.Greater(t, h2, h1, "a room becoming encrypted is a position")
	require.Equal(t, []string{carol, remoteU}, changes(t, dl, alice, h1, h2).Changed, "its members are now shared")
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE2))
	require.Equal(t, h2, head(t, dl), "encrypting twice is no change")
}

func testDeviceListDeleteAndCrossSigning(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k1"))
	h0 := head(t, dl)
	_, err := dl.DeleteDevice(ctx(t), bob, "B1")
	require.NoError(t, err)
	h1 := head(t, dl)
	require.Equal(t, []string{bob}, changes(t, dl, alice, h0, h1).Changed, "a deleted device is a change")

	master := json.RawMessage(`{"user_id":"@bob:example.org","usage":["master"],"keys":{"ed25519:M":"M"}}`)
	require.NoError(t, dl.PutCrossSigning(ctx(t), bob, devicelists.CrossSigningKeys{Master: master}))
	h2 := head(t, dl)
	require.Equal(t, []string{bob}, changes(t, dl, alice, h1, h2).Changed, "cross-signing keys are a change")
	require.NoError(t, dl.PutCrossSigning(ctx(t), bob, devicelists.CrossSigningKeys{Master: master}))
	require.Equal(t, h2, head(t, dl), "the same keys again are no change")
	cs, err := b.Devices().CrossSigning(ctx(t), []string{bob, carol})
	require.NoError(t, err)
	require.JSONEq(t, string(master), string(cs[bob][devicelists.MasterKey]))
	require.NotContains(t, cs, carol)
}

func testLocalKeys(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	name := "Bob's phone"
	_, _, err := dl.PutDevice(ctx(t), bob, "B1", "", &name, keysFor(bob, "B1", "k1"))
	require.NoError(t, err)
	putDevice(t, dl, bob, "B2", keysFor(bob, "B2", "k2"))
	putDevice(t, dl, bob, "B3", nil)
	putDevice(t, dl, carol, "C1", keysFor(carol, "C1", "k4"))
	got, err := b.Devices().LocalKeys(ctx(t), map[string][]string{bob: nil, carol: {"C1", "NOPE"}})
	require.NoError(t, err)
	require.Len(t, got, 4)
	require.Equal(t, "B1", got[0].DeviceID)
	require.Equal(t, "Bob's phone", got[0].DisplayName)
	require.JSONEq(t, string(keysFor(bob, "B1", "k1")), string(got[0].Keys))
	require.Nil(t, got[2].Keys, "a device without keys has none")
	require.Equal(t, carol, got[3].UserID)

	res, err := dl.QueryKeys(ctx(t), alice, devicelists.KeysQuery{DeviceKeys: map[string][]string{bob: {}, "@x:remote.test": {}}})
	require.NoError(t, err)
	require.Len(t, res.DeviceKeys[bob], 2, "devices without keys are not listed")
	var k struct {
		Unsigned struct {
			Name string `json:"device_display_name"`
		} `json:"unsigned"`
	}
	require.NoError(t, json.Unmarshal(res.DeviceKeys[bob]["B1"], &k))
	require.Equal(t, "Bob's phone", k.Unsigned.Name)
	require.Contains(t, res.Failures, "remote.test", "an unreachable server is listed in failures")

	_, _, err = dl.PutDevice(ctx(t), bob, "B1", "", nil, keysFor(carol, "B1", "x"))
	require.Error(t, err, "keys of another user are refused")
}

// testDeviceListLateCommit is invariant 3 for the device-list stream: a
// change holds its transaction open after taking a position while another
// change commits and a reader computes changes; the reader must never skip
// the late one.
func testDeviceListLateCommit(t *testing.T, e *Env) {
	entered, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	b := e.Open(Options{DeviceHooks: devicelists.Hooks{AfterStreamAppend: func(_ context.Context, kind, user, _ string) error {
		if kind == "device" && user == bob && first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
		return nil
	}}})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	member(t, dl, roomE, dave, "join")
	from := head(t, dl)

	bobDone := make(chan struct{})
	go func() { defer close(bobDone); putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k")) }()
	<-entered
	daveDone := make(chan struct{})
	go func() { defer close(daveDone); putDevice(t, dl, dave, "D1", keysFor(dave, "D1", "k")) }()
	waitFor(t, "Dave's change to commit or wait", func() bool {
		select {
		case <-daveDone:
			return true
		default:
			return e.h.WaitingWriters(t, b) >= 1
		}
	})
	seen := map[string]bool{}
	mid := head(t, dl)
	for _, u := range changes(t, dl, alice, from, mid).Changed {
		seen[u] = true
	}
	close(release)
	<-bobDone
	<-daveDone
	for _, u := range changes(t, dl, alice, mid, head(t, dl)).Changed {
		seen[u] = true
	}
	require.True(t, seen[bob] && seen[dave], "a reader skipped a late commit: saw %v", seen)
}

func testDeviceListWakeUps(t *testing.T, e *Env) {
	hub := wakeup.NewHub()
	b := e.Open(Options{Hub: hub})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	member(t, dl, roomPlain, carol, "join")
	member(t, dl, roomPlain, bob, "join")
	wa := hub.Register(wakeup.UserKey(alice))
	wc := hub.Register(wakeup.UserKey(carol))
	wb := hub.Register(wakeup.UserKey(bob))
	defer wa.Close()
	defer wc.Close()
	defer wb.Close()
	drainSignal(wa)
	drainSignal(wc)
	drainSignal(wb)
	putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k"))
	awaitSignal(t, wa, "Alice shares an encrypted room with Bob")
	awaitSignal(t, wb, "Bob's own device changed")
	// Every key of one change is woken in one call, so Carol would be
	// signalled by now if she were included.
	select {
	case <-wc.C():
		t.Fatal("Carol shares no encrypted room with Bob and must not be woken")
	default:
	}
}

func testDeviceListPruning(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	putDevice(t, dl, bob, "B1", keysFor(bob, "B1", "k"))
	old := int64(1)
	h := head(t, dl)
	require.NoError(t, dl.PruneStream(ctx(t), -time.Hour)) // everything is older than now+1h
	st, err := b.Devices().StreamState(ctx(t))
	require.NoError(t, err)
	require.Equal(t, h, st.PrunedBelow)
	require.Equal(t, h, st.Head, "the head survives pruning: positions are never reused")
	c := changes(t, dl, alice, old, h)
	require.Equal(t, []string{alice, bob}, c.Changed, "a since older than the pruned stream lists everyone shared")
	putDevice(t, dl, bob, "B2", keysFor(bob, "B2", "k"))
	require.Equal(t, []string{bob}, changes(t, dl, alice, h, head(t, dl)).Changed, "after pruning, exact answers resume")

	_, err = dl.Changes(ctx(t), alice, head(t, dl)+5, head(t, dl)+5)
	require.Error(t, err, "a position never issued is refused")
}

// testDeviceListRoomWakeUps: a room becoming encrypted, and a change of who
// shares an encrypted room, wake every local member of the room (a leaver
// too: it must learn whom to forget); a membership change that keeps the
// user sharing is no position.
func testDeviceListRoomWakeUps(t *testing.T, e *Env) {
	hub := wakeup.NewHub()
	b := e.Open(Options{Hub: hub})
	dl := lists(b)
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	wa := hub.Register(wakeup.UserKey(alice))
	wb := hub.Register(wakeup.UserKey(bob))
	defer wa.Close()
	defer wb.Close()
	drainSignal(wa)
	drainSignal(wb)

	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	awaitSignal(t, wa, "Alice is a member of the room that became encrypted")
	awaitSignal(t, wb, "Bob is a member of the room that became encrypted")

	member(t, dl, roomE, remoteU, "join")
	awaitSignal(t, wa, "a remote user joined Alice's encrypted room")
	awaitSignal(t, wb, "a remote user joined Bob's encrypted room")

	h := head(t, dl)
	member(t, dl, roomE, carol, "invite")
	h1 := head(t, dl)
	require.Greater(t, h1, h, "an invite starts sharing")
	member(t, dl, roomE, carol, "join")
	require.Equal(t, h1, head(t, dl), "invite to join keeps sharing: no position")
	drainSignal(wa)
	drainSignal(wb)

	member(t, dl, roomE, bob, "leave")
	awaitSignal(t, wb, "the leaver learns whom to forget")
	awaitSignal(t, wa, "Alice learns that Bob left")
	c := changes(t, dl, bob, h1, head(t, dl))
	require.Equal(t, []string{alice, carol, remoteU}, c.Left)
}

// testDeviceUpdatesArePositions: a change of a device's display name is a
// position, the same name again or a new access token is not.
func testDeviceUpdatesArePositions(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	putDevice(t, dl, bob, "B1", nil)
	h0 := head(t, dl)
	require.Positive(t, h0, "a new device is a position even without keys")

	name := "Bob's laptop"
	_, created, err := dl.PutDevice(ctx(t), bob, "B1", "", &name, nil)
	require.NoError(t, err)
	require.False(t, created)
	h1 := head(t, dl)
	require.Greater(t, h1, h0, "a new display name is a change")
	_, _, err = dl.PutDevice(ctx(t), bob, "B1", "", &name, nil)
	require.NoError(t, err)
	_, _, err = dl.PutDevice(ctx(t), bob, "B1", "tok-new", nil, nil)
	require.NoError(t, err)
	require.Equal(t, h1, head(t, dl), "the same name again, or a new token, is no change")

	got, err := b.Devices().LocalKeys(ctx(t), map[string][]string{bob: {"B1"}})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, name, got[0].DisplayName, "the name survives updates that do not give one")
	require.Nil(t, got[0].Keys)
}

// testSyncReadsDeviceListHead: /sync reads the device-list head with the
// inbox in one round trip; it must be the head the device-list store reports.
func testSyncReadsDeviceListHead(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	dev := mkDevice(t, b, bob, "B1")
	putDevice(t, dl, bob, "B2", keysFor(bob, "B2", "k"))
	res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, Limit: 10, DeviceListHead: true})
	require.NoError(t, err)
	require.Equal(t, head(t, dl), res.DeviceListHead)
	require.Positive(t, res.DeviceListHead)
	res, err = b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, Limit: 10})
	require.NoError(t, err)
	require.Zero(t, res.DeviceListHead, "not read unless asked for")
}
