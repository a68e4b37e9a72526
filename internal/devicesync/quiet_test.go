package devicesync_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/testdb"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// hearing waits until the hub hears every wake-up (on PostgreSQL, once the
// listener listens): only then are devices remembered quiet.
func hearing(t *testing.T, hub *wakeup.Hub) {
	t.Helper()
	require.Eventually(t, func() bool { return !hub.Deaf() }, 30*time.Second, time.Millisecond, "the wake-up listener listens")
}

type answer struct {
	res devicesync.Result
	err error
}

// poll starts a long-poll of req and returns once it waits.
func (e *env) poll(t *testing.T, c context.Context, req devicesync.Request) <-chan answer {
	t.Helper()
	out := make(chan answer, 1)
	n := e.hub.Len()
	go func() {
		res, err := e.sync.Sync(c, req)
		out <- answer{res, err}
	}()
	require.Eventually(t, func() bool { return e.hub.Len() == n+1 }, 30*time.Second, time.Millisecond, "the sync waits")
	return out
}

func (e *env) stored(t *testing.T, dev inbox.Recipient) int {
	t.Helper()
	st, err := e.inbox.AdminInbox(ctx(t), dev)
	require.NoError(t, err)
	return int(st.Count)
}

// answered waits until the hub hears every wake-up, then has bob's B1
// receive message 1 in an initial sync, whose answer leaves it quiet.
func (e *env) answered(t *testing.T) (inbox.Recipient, devicesync.Result) {
	t.Helper()
	hearing(t, e.hub)
	dev := e.device(t, bob, "B1")
	e.send(t, "1", bob, "B1", 1)
	first, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}})
	require.NoError(t, err)
	require.Equal(t, []int{1}, ns(t, first.ToDevice.Events))
	return dev, first
}

// next is the request a client makes with res's token.
func next(dev inbox.Recipient, res devicesync.Result, timeout time.Duration) devicesync.Request {
	return devicesync.Request{Device: dev, ToDevice: res.ToDevice.Next, Lists: devicesync.ListsAt(res.ListsHead), Timeout: timeout}
}

// A long-poll bringing the since this replica just answered waits without
// reading the store: its first check, which acknowledges, is the first
// wake-up's. So a delivered message costs one check, not two, and its row
// stays until that check.
func TestQuietLongPollWaitsWithoutItsFirstCheck(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		dev, first := e.answered(t)
		reads, skips := e.sync.Checks()
		c := e.poll(t, ctx(t), next(dev, first, time.Minute))
		require.Eventually(t, func() bool { _, s := e.sync.Checks(); return s == skips+1 }, 30*time.Second, time.Millisecond, "the first check is skipped")
		r, _ := e.sync.Checks()
		require.Equal(t, reads, r, "nothing read")
		require.Equal(t, 1, e.stored(t, dev), "not yet acknowledged")

		e.send(t, "2", bob, "B1", 2)
		a := <-c
		require.NoError(t, a.err)
		require.Equal(t, []int{2}, ns(t, a.res.ToDevice.Events))
		r, _ = e.sync.Checks()
		require.Equal(t, reads+1, r, "one check: the wake-up's")
		require.Equal(t, 1, e.stored(t, dev), "message 1 acknowledged by that check, 2 delivered")
	})
}

// A quiet long-poll that no wake-up ends checks at its timeout: the since
// is acknowledged and the answer is read from the store.
func TestQuietLongPollChecksAtItsTimeout(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		dev, first := e.answered(t)
		reads, skips := e.sync.Checks()
		res, err := e.sync.Sync(ctx(t), next(dev, first, 200*time.Millisecond))
		require.NoError(t, err)
		require.Empty(t, res.ToDevice.Events)
		r, s := e.sync.Checks()
		require.Equal(t, [2]uint64{reads + 1, skips + 1}, [2]uint64{r, s}, "skipped first, checked at the end")
		require.Zero(t, e.stored(t, dev), "the since was acknowledged")
		require.Equal(t, first.ToDevice.Next.Acked(), res.ToDevice.Next)

		// Its answer leaves the device quiet again; a long-poll of the
		// same since a second time waits too.
		again, err := e.sync.Sync(ctx(t), next(dev, res, 100*time.Millisecond))
		require.NoError(t, err)
		require.Equal(t, res.Token(), again.Token())
		_, s2 := e.sync.Checks()
		require.Equal(t, s+1, s2)
	})
}

// Whatever a check would report has a wake-up, and a wake-up between an
// answer and the next long-poll makes that long-poll check at once: a
// message for the device, a device-list change its user must hear of, the
// device's deletion. Each long-poll here would otherwise wait out its hour
// (and fail on its context's deadline).
func TestWakeUpBetweenSyncsEndsTheNextAtOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		hearing(t, e.hub)
		dev := e.device(t, bob, "B1")
		e.device(t, carol, "C1")
		res, err := e.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}})
		require.NoError(t, err)
		long := func() devicesync.Result {
			t.Helper()
			c, cancel := context.WithTimeout(ctx(t), 20*time.Second)
			defer cancel()
			_, skips := e.sync.Checks()
			a, err := e.sync.Sync(c, next(dev, res, time.Hour))
			require.NoError(t, err)
			_, s := e.sync.Checks()
			require.Equal(t, skips, s, "not skipped")
			return a
		}

		e.send(t, "1", bob, "B1", 1)
		res = long()
		require.Equal(t, []int{1}, ns(t, res.ToDevice.Events))

		e.shareEncryptedRoom(t, "!r:localhost", bob, carol)
		res = long()
		require.Equal(t, []string{carol}, res.Lists.Changed)

		_, err = e.devices.DeleteDevice(ctx(t), carol, "C1")
		require.NoError(t, err)
		res = long()
		require.Equal(t, []string{carol}, res.Lists.Changed, "carol's device went")

		_, err = e.devices.DeleteDevice(ctx(t), bob, "B1")
		require.NoError(t, err)
		c, cancel := context.WithTimeout(ctx(t), 20*time.Second)
		defer cancel()
		_, err = e.sync.Sync(c, next(dev, res, time.Hour))
		require.ErrorIs(t, err, devicesync.ErrDeviceGone)
	})
}

// A replica that may have missed wake-ups (its listener is not listening)
// never skips a check: here a second replica of the database that never
// listens misses the first's wake-up, and its long-poll finds the message
// at its first check.
func TestDeafReplicaChecksEveryLongPoll(t *testing.T) {
	url := testdb.New(t)
	open := func(start bool) *env {
		hub := wakeup.NewHub()
		b, err := storage.Open(ctx(t), storage.Options{URL: url, Migrate: true, Hub: hub})
		require.NoError(t, err)
		bctx, stop := context.WithCancel(context.Background())
		if start {
			b.Start(bctx)
		}
		t.Cleanup(func() { hub.Close(); stop(); b.Close() })
		in := inbox.New(inbox.Config{ServerName: server, Store: b.Inbox()})
		dl := devicelists.New(b.Devices(), server, nil, nil)
		return &env{sync: devicesync.New(devicesync.Config{Inbox: in, Devices: dl, Hub: hub}), inbox: in, devices: dl, hub: hub}
	}
	a, deaf := open(true), open(false)
	hearing(t, a.hub)
	require.True(t, deaf.hub.Deaf())
	dev := a.device(t, bob, "B1")
	res, err := deaf.sync.Sync(ctx(t), devicesync.Request{Device: dev, ToDevice: inbox.Position{NID: dev.NID}})
	require.NoError(t, err)
	a.send(t, "1", bob, "B1", 1)
	c, cancel := context.WithTimeout(ctx(t), 20*time.Second)
	defer cancel()
	got, err := deaf.sync.Sync(c, next(dev, res, time.Hour))
	require.NoError(t, err)
	require.Equal(t, []int{1}, ns(t, got.ToDevice.Events))
	_, skips := deaf.sync.Checks()
	require.Zero(t, skips)
}
