package devicesync_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/testdb"
	"github.com/todeviced/todeviced/internal/wakeup"
)

func TestMain(m *testing.M) {
	code := testdb.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const (
	server = "localhost"
	alice  = "@alice:localhost"
	bob    = "@bob:localhost"
	carol  = "@carol:localhost"
)

// env is a sync service on a real database, with the services it reads.
type env struct {
	sync    *devicesync.Service
	inbox   *inbox.Service
	devices *devicelists.Service
	hub     *wakeup.Hub
}

// eachBackend runs fn on a fresh PostgreSQL database and a fresh SQLite file.
func eachBackend(t *testing.T, fn func(t *testing.T, e *env)) {
	backends := map[string]func(t *testing.T) string{
		"postgres": func(t *testing.T) string { return testdb.New(t) },
		"sqlite":   func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "todeviced.db") },
	}
	for name, newURL := range backends {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			hub := wakeup.NewHub()
			b, err := storage.Open(ctx(t), storage.Options{URL: newURL(t), Migrate: true, Hub: hub})
			require.NoError(t, err)
			bctx, stop := context.WithCancel(context.Background())
			b.Start(bctx)
			t.Cleanup(func() { hub.Close(); stop(); b.Close() })
			in := inbox.New(inbox.Config{ServerName: server, Store: b.Inbox()})
			dl := devicelists.New(b.Devices(), server, nil, nil)
			fn(t, &env{
				sync:  devicesync.New(devicesync.Config{Inbox: in, Devices: dl, Hub: hub}),
				inbox: in, devices: dl, hub: hub,
			})
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func (e *env) device(t *testing.T, userID, deviceID string) inbox.Recipient {
	t.Helper()
	d, _, err := e.devices.PutDevice(ctx(t), userID, deviceID, "", nil, nil)
	require.NoError(t, err)
	return inbox.Recipient{UserID: d.UserID, NID: d.NID}
}

func (e *env) send(t *testing.T, txnID, to, deviceID string, n int) {
	t.Helper()
	_, err := e.inbox.Send(ctx(t), inbox.TxnKey{UserID: alice, DeviceID: "A1", EventType: "m.test", TxnID: txnID},
		inbox.Messages{to: {deviceID: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}})
	require.NoError(t, err)
}

// shareEncryptedRoom puts users in one encrypted room.
func (e *env) shareEncryptedRoom(t *testing.T, roomID string, users ...string) {
	t.Helper()
	require.NoError(t, e.devices.SetRoomEncrypted(ctx(t), roomID))
	m := map[string]devicelists.MemberUpdate{}
	for _, u := range users {
		order := int64(1)
		m[u] = devicelists.MemberUpdate{Membership: "join", StreamOrdering: &order}
	}
	require.NoError(t, e.devices.SetMemberships(ctx(t), roomID, m))
}

func ns(t *testing.T, evs []inbox.Event) []int {
	t.Helper()
	out := []int{}
	for _, ev := range evs {
		var c struct{ N int }
		require.NoError(t, json.Unmarshal(ev.Content, &c))
		out = append(out, c.N)
	}
	return out
}

// A since acknowledges what it covers, then the sync fetches; the same since
// again returns the same messages (a lost answer loses nothing), and the
// next token round-trips through the client token.
func TestSyncAcknowledgesThenFetches(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		dev := e.device(t, bob, "B1")
		for i := range 3 {
			e.send(t, fmt.Sprint(i), bob, "B1", i)
		}
		req := devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}, Limit: 2}
		first, err := e.sync.Sync(ctx(t), req)
		require.NoError(t, err)
		require.Equal(t, []int{0, 1}, ns(t, first.ToDevice.Events))
		require.True(t, first.ToDevice.Limited)
		require.Nil(t, first.Lists, "an initial sync has no device-list answer")

		tok, err := devicesync.ParseToken(e.sync.Epoch(), dev, first.Token())
		require.NoError(t, err)
		require.Equal(t, first.ToDevice.Next, tok.ToDevice)
		require.Equal(t, devicesync.ListsAt(first.ListsHead), tok.Lists)

		again, err := e.sync.Sync(ctx(t), req)
		require.NoError(t, err)
		require.Equal(t, []int{0, 1}, ns(t, again.ToDevice.Events), "nothing was acknowledged yet")

		next, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: tok.ToDevice, Lists: tok.Lists})
		require.NoError(t, err)
		require.Equal(t, []int{2}, ns(t, next.ToDevice.Events))
		require.NotNil(t, next.Lists)
		require.Empty(t, next.Lists.Changed)
		require.NotNil(t, next.Lists.Changed, "never nil: JSON [] not null")

		// The first token again: its messages were acknowledged by the second.
		old, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: tok.ToDevice})
		require.NoError(t, err)
		require.Equal(t, []int{2}, ns(t, old.ToDevice.Events))
	})
}

// A since above every position issued is refused before anything is deleted
// (the check is the store's sync query's); so is a device-list position above
// the stream's head.
func TestSinceNeverIssuedIsRefused(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		dev := e.device(t, bob, "B1")
		e.send(t, "1", bob, "B1", 1)
		forged := devicesync.FormatToken(e.sync.Epoch(), inbox.Position{NID: dev.NID, Hi: 99999999}, 0)
		tok, err := devicesync.ParseToken(e.sync.Epoch(), dev, forged)
		require.NoError(t, err, "well-formed: it is the store that knows it was never issued")
		_, err = e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: tok.ToDevice, Lists: tok.Lists})
		e1, ok := matrix.AsError(err)
		require.True(t, ok, "want a Matrix error, got %v", err)
		require.Equal(t, matrix.InvalidParam, e1.Code)

		res, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}})
		require.NoError(t, err)
		require.Equal(t, []int{1}, ns(t, res.ToDevice.Events), "the refused since deleted nothing")

		_, err = e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: res.ToDevice.Next, Lists: devicesync.ListsAt(res.ListsHead + 1000)})
		e2, ok := matrix.AsError(err)
		require.True(t, ok, "want a Matrix error, got %v", err)
		require.Equal(t, matrix.InvalidParam, e2.Code)
		_, err = e.sync.KeyChanges(ctx(t), bob, devicesync.ListsAt(0), devicesync.ListsAt(res.ListsHead+1000))
		require.Error(t, err)
	})
}

// A token of another epoch acknowledges nothing and answers the device
// lists with everyone the user shares an encrypted room with; the next
// check of the same long-poll continues from the head.
func TestTokenOfAnotherEpoch(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		dev := e.device(t, bob, "B1")
		e.device(t, carol, "C1")
		e.shareEncryptedRoom(t, "!r:localhost", bob, carol)
		e.send(t, "1", bob, "B1", 1)
		first, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}})
		require.NoError(t, err)

		old := devicesync.FormatToken("someotherepoch", first.ToDevice.Next, first.ListsHead)
		tok, err := devicesync.ParseToken(e.sync.Epoch(), dev, old)
		require.NoError(t, err)
		res, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: tok.ToDevice, Lists: tok.Lists})
		require.NoError(t, err)
		require.Equal(t, []int{1}, ns(t, res.ToDevice.Events), "another epoch acknowledges nothing")
		require.NotNil(t, res.Lists)
		require.Contains(t, res.Lists.Changed, carol)

		c, err := e.sync.KeyChanges(ctx(t), bob, tok.Lists, devicesync.ListsAt(res.ListsHead))
		require.NoError(t, err)
		require.Contains(t, c.Changed, carol)

		lists, err := devicesync.ParseLists(e.sync.Epoch(), devicesync.FormatLists("someotherepoch", 1))
		require.NoError(t, err)
		require.True(t, lists.Everyone)
	})
}

// A waiting sync registers, checks again, and returns when a message for
// its device commits, or a device list its user shares changes.
func TestLongPollWakes(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		dev := e.device(t, bob, "B1")
		first, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}})
		require.NoError(t, err)
		require.Empty(t, first.ToDevice.Events)

		type answer struct {
			res devicesync.Result
			err error
		}
		wait := func(req devicesync.Request) <-chan answer {
			c := make(chan answer, 1)
			go func() {
				res, err := e.sync.Sync(ctx(t), req)
				c <- answer{res, err}
			}()
			require.Eventually(t, func() bool { return e.hub.Len() == 1 }, 30*time.Second, time.Millisecond, "the sync waits")
			return c
		}
		req := devicesync.Request{Device: dev, ToDevice: first.ToDevice.Next, Lists: devicesync.ListsAt(first.ListsHead), Timeout: time.Minute}

		c := wait(req)
		e.send(t, "1", bob, "B1", 7)
		a := <-c
		require.NoError(t, a.err)
		require.Equal(t, []int{7}, ns(t, a.res.ToDevice.Events))

		req.ToDevice, req.Lists = a.res.ToDevice.Next, devicesync.ListsAt(a.res.ListsHead)
		c = wait(req)
		e.device(t, carol, "C1")
		e.shareEncryptedRoom(t, "!r:localhost", bob, carol)
		a = <-c
		require.NoError(t, a.err)
		require.Empty(t, a.res.ToDevice.Events)
		require.Equal(t, []string{carol}, a.res.Lists.Changed)
		require.Greater(t, a.res.ListsHead, req.Lists.Pos)

		// With nothing new, a closing hub answers at once, empty.
		req.ToDevice, req.Lists = a.res.ToDevice.Next, devicesync.ListsAt(a.res.ListsHead)
		c = wait(req)
		e.hub.Close()
		a = <-c
		require.NoError(t, a.err)
		require.Empty(t, a.res.ToDevice.Events)
		require.Empty(t, a.res.Lists.Changed)
		require.Equal(t, req.Lists.Pos, a.res.ListsHead)
	})
}
