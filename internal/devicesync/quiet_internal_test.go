package devicesync

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// The ledger of quiet devices: a device is quiet only at the answer of a
// check that no wake-up of its keys followed, only for a sync that brings
// that answer's positions, token and shape, and never while the hub is
// deaf.
func TestQuietDevicesLedger(t *testing.T) {
	hub := wakeup.NewHub()
	q := newQuietDevices(hub)
	dk, uk := wakeup.DeviceKey(7), wakeup.UserKey("@bob:x")
	other := wakeup.DeviceKey(8)
	at := quietAt{toDevice: inbox.Position{NID: 7, Lo: 3, Hi: 5}, listsHead: 11, keyCounts: true, token: []byte("tok")}
	req := func() *Request {
		return &Request{ToDevice: at.toDevice, Lists: ListsAt(11), KeyCounts: true, TokenHash: []byte("tok"), Timeout: 1}
	}
	settled := func() {
		t.Helper()
		q.settle(dk, q.arm(dk, uk), at)
		require.True(t, q.quiet(dk, req()))
	}

	require.False(t, q.quiet(dk, req()), "never answered here")
	settled()
	for name, mod := range map[string]func(r *Request){
		"another to-device since":        func(r *Request) { r.ToDevice.Hi++ },
		"an acknowledged since":          func(r *Request) { r.ToDevice = r.ToDevice.Acked() },
		"another device-list since":      func(r *Request) { r.Lists = ListsAt(10) },
		"a since of another epoch":       func(r *Request) { r.Lists = listsOfAnotherEpoch },
		"no key counts asked for":        func(r *Request) { r.KeyCounts = false },
		"no inbox read (e2ee alone)":     func(r *Request) { r.ListsOnly = true },
		"another remembered token":       func(r *Request) { r.TokenHash = []byte("other") },
		"a since for an initial lists":   func(r *Request) { r.Lists = ListsSince{Incremental: true} },
		"a since of no device (initial)": func(r *Request) { r.ToDevice = inbox.Position{} },
	} {
		r := req()
		mod(r)
		require.False(t, q.quiet(dk, r), name)
	}
	r := req()
	r.Lists, r.TokenHash = ListsSince{}, nil
	require.True(t, q.quiet(dk, r), "no device-list since, a token read by this request")

	hub.Wake(other)
	require.True(t, q.quiet(dk, req()), "another device's wake-up")
	hub.Wake(wakeup.OutboxKey("remote.example"))
	require.True(t, q.quiet(dk, req()), "a federation outbox's wake-up")
	hub.Wake(dk)
	require.False(t, q.quiet(dk, req()), "the device's wake-up")
	settled()
	hub.Wake(uk)
	require.False(t, q.quiet(dk, req()), "its user's wake-up")
	settled()
	hub.WakeAll()
	require.False(t, q.quiet(dk, req()), "a wake-up of everyone")

	// A wake-up between the arm (before the check reads) and the settle
	// (when its answer is handed out): the answer may miss what woke it.
	tk := q.arm(dk, uk)
	hub.Wake(dk)
	q.settle(dk, tk, at)
	require.False(t, q.quiet(dk, req()), "woken during the check")
	tk = q.arm(dk, uk)
	hub.Wake(uk)
	q.settle(dk, tk, at)
	require.False(t, q.quiet(dk, req()), "its user woken during the check")
	// Two checks of one device at once: only the later arm settles.
	first, second := q.arm(dk, uk), q.arm(dk, uk)
	q.settle(dk, first, at)
	require.False(t, q.quiet(dk, req()), "an earlier check's answer")
	q.settle(dk, second, at)
	require.True(t, q.quiet(dk, req()))
	third := q.arm(dk, uk)
	require.False(t, q.quiet(dk, req()), "a check under way unsettles")
	q.settle(dk, third, at)

	hub.SetDeaf(true)
	require.False(t, q.quiet(dk, req()), "a deaf hub may have missed a wake-up")
	require.Zero(t, q.arm(dk, uk), "nor arms")
	hub.SetDeaf(false)
	// The listener that makes a hub deaf sends WakeAll when it hears
	// again, which forgets every device (above).
	require.True(t, q.quiet(dk, req()))
}

// The user index follows the devices: a device's wake-up takes it out of
// its user's list, and the ledger stops growing at maxQuiet.
func TestQuietDevicesBounded(t *testing.T) {
	hub := wakeup.NewHub()
	q := newQuietDevices(hub)
	uk := wakeup.UserKey("@bob:x")
	for range 3 {
		q.arm(wakeup.DeviceKey(1), uk)
	}
	q.arm(wakeup.DeviceKey(2), uk)
	require.Len(t, q.user[uk], 2, "a device is listed once")
	hub.Wake(wakeup.DeviceKey(1))
	require.Equal(t, []wakeup.Key{wakeup.DeviceKey(2)}, q.user[uk])
	hub.Wake(wakeup.DeviceKey(2))
	require.NotContains(t, q.user, uk, "a user with no device left")

	for i := range maxQuiet {
		require.NotZero(t, q.arm(wakeup.DeviceKey(int64(i)), wakeup.UserKey("@u"+string(rune('a'+i%26))+":x")))
	}
	require.Zero(t, q.arm(wakeup.DeviceKey(maxQuiet), uk), "full")
	require.NotZero(t, q.arm(wakeup.DeviceKey(5), uk), "a device it holds")
	hub.WakeAll()
	require.Empty(t, q.device)
	require.Empty(t, q.user)
	require.NotZero(t, q.arm(wakeup.DeviceKey(maxQuiet), uk))
}
