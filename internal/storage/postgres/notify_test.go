package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/testdb"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// A replica's own NOTIFYs come back to its listener after it has woken its
// waiters itself; it drops them, while the other replicas hear them.
// Notifications reach a listener in the order their transactions
// committed, so when replica a hears b's later commit, a's own echo has
// already come (and was dropped, or counted).
func TestListenerDropsItsOwnNotifications(t *testing.T) {
	url := testdb.New(t)
	type replica struct {
		b   storage.Backend
		hub *wakeup.Hub
		mu  sync.Mutex
		n   map[wakeup.Key]int
	}
	open := func() *replica {
		r := &replica{hub: wakeup.NewHub(), n: map[wakeup.Key]int{}}
		r.hub.Observe(func(keys []wakeup.Key) {
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, k := range keys {
				r.n[k]++
			}
		})
		b, err := storage.Open(context.Background(), storage.Options{URL: url, Hub: r.hub})
		require.NoError(t, err)
		ctx, stop := context.WithCancel(context.Background())
		b.Start(ctx)
		t.Cleanup(func() { r.hub.Close(); stop(); b.Close() })
		r.b = b
		require.Eventually(t, func() bool { return !r.hub.Deaf() }, 30*time.Second, time.Millisecond, "listening")
		return r
	}
	count := func(r *replica, k wakeup.Key) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.n[k]
	}
	a, b := open(), open()
	ctx := context.Background()
	d, _, err := a.b.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:localhost", DeviceID: "B1"})
	require.NoError(t, err)
	key := wakeup.DeviceKey(d.NID)
	send := func(r *replica, txn string) {
		_, err := r.b.Inbox().Accept(ctx, &inbox.Accept{
			Txn: inbox.TxnKey{UserID: "@alice:localhost", DeviceID: "A1", EventType: "m.test", TxnID: txn}, Sender: "@alice:localhost", EventType: "m.test",
			Local: []inbox.LocalMessage{{UserID: "@bob:localhost", DeviceID: "B1", Content: json.RawMessage(`{}`)}}, Response: []byte(`{}`),
		})
		require.NoError(t, err)
	}
	send(a, "1")
	require.Equal(t, 1, count(a, key), "woken at once, by itself")
	require.Eventually(t, func() bool { return count(b, key) == 1 }, 30*time.Second, time.Millisecond, "the other replica hears it")
	send(b, "2")
	require.Eventually(t, func() bool { return count(a, key) == 2 }, 30*time.Second, time.Millisecond, "and the other way")
	require.Equal(t, 2, count(b, key), "b's own echo dropped (a's was, before b's commit reached a)")
	send(a, "3")
	require.Eventually(t, func() bool { return count(b, key) == 3 }, 30*time.Second, time.Millisecond)
	require.Equal(t, 3, count(a, key), "a's own echoes dropped")
}

// Every payload leads with its origin, however the keys are split; a
// payload of an older replica (no origin) wakes its keys.
func TestNotifyPayloadOrigin(t *testing.T) {
	long := make([]wakeup.Key, 0, 300)
	for i := range 300 {
		long = append(long, wakeup.UserKey(fmt.Sprintf("@user%03d-%s:example.org", i, strings.Repeat("x", 20))))
	}
	ps := postgres.NotifyPayloads("rme", long)
	require.Greater(t, len(ps), 1, "split")
	var got []wakeup.Key
	for _, p := range ps {
		require.LessOrEqual(t, len(p), 8000)
		keys, own := postgres.ParsePayload(p, "rother")
		require.False(t, own)
		got = append(got, keys...)
		_, own = postgres.ParsePayload(p, "rme")
		require.True(t, own)
	}
	require.Equal(t, long, got)

	keys, own := postgres.ParsePayload("d1 u@bob:x", "rme")
	require.False(t, own)
	require.Equal(t, []wakeup.Key{"d1", "u@bob:x"}, keys)
	require.Empty(t, postgres.NotifyPayloads("rme", nil))
}
