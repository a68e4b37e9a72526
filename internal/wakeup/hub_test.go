package wakeup

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWakeSignalsOnlyMatchingWaiters(t *testing.T) {
	h := NewHub()
	a := h.Register(DeviceKey(1))
	b := h.Register(DeviceKey(2), UserKey("@u:x"))
	defer a.Close()
	defer b.Close()

	h.Wake(DeviceKey(2))
	require.Len(t, b.C(), 1)
	require.Len(t, a.C(), 0, "a waiter for another key is not woken")

	h.Wake(UserKey("@u:x"), UserKey("@u:x"))
	require.Len(t, b.C(), 1, "signals coalesce into one pending wake-up")

	h.WakeAll()
	require.Len(t, a.C(), 1)
}

func TestCloseUnregisters(t *testing.T) {
	var counts []int
	h := NewHub()
	h.OnWaitersChanged = func(n int) { counts = append(counts, n) }
	w := h.Register(DeviceKey(1), DeviceKey(1))
	require.Equal(t, 1, h.Len())
	w.Close()
	w.Close()
	require.Equal(t, 0, h.Len())
	require.Equal(t, []int{1, 0}, counts)
	h.Wake(DeviceKey(1))
	require.Len(t, w.C(), 0, "a closed waiter is not signalled")
	require.Empty(t, h.waiters, "no empty key sets are left behind")
}

func TestPollRegistersBeforeFirstCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		var checks atomic.Int32
		done := make(chan bool)
		go func() {
			ok, err := h.Poll(context.Background(), time.Minute, []Key{DeviceKey(7)}, func(context.Context) (bool, error) {
				n := checks.Add(1)
				if n == 1 {
					// A commit lands between the store read and the wait:
					// its wake-up must not be lost.
					h.Wake(DeviceKey(7))
					return false, nil
				}
				return true, nil
			})
			require.NoError(t, err)
			done <- ok
		}()
		require.True(t, <-done, "the wake-up during the first check leads to a second check")
		require.EqualValues(t, 2, checks.Load())
	})
}

func TestPollTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		start := time.Now()
		ok, err := h.Poll(context.Background(), 30*time.Second, []Key{DeviceKey(1)}, func(context.Context) (bool, error) { return false, nil })
		require.NoError(t, err)
		require.False(t, ok)
		require.Equal(t, 30*time.Second, time.Since(start), "the wait lasts exactly the timeout (fake clock)")
		require.Zero(t, h.Len(), "the waiter is gone after the poll")
	})
}

func TestPollSpuriousWakeKeepsWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		var checks atomic.Int32
		res := make(chan bool)
		go func() {
			ok, _ := h.Poll(context.Background(), time.Minute, []Key{DeviceKey(1)}, func(context.Context) (bool, error) {
				return checks.Add(1) == 3, nil
			})
			res <- ok
		}()
		synctest.Wait()
		h.Wake(DeviceKey(1)) // nothing new yet: check again, keep waiting
		synctest.Wait()
		require.EqualValues(t, 2, checks.Load())
		h.Wake(DeviceKey(1))
		require.True(t, <-res)
	})
}

func TestPollZeroTimeoutChecksOnce(t *testing.T) {
	h := NewHub()
	n := 0
	ok, err := h.Poll(context.Background(), 0, []Key{DeviceKey(1)}, func(context.Context) (bool, error) { n++; return false, nil })
	require.NoError(t, err)
	require.False(t, ok)
	require.Equal(t, 1, n)
	require.Zero(t, h.Len())
}

func TestPollEndsOnCloseAndContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		res := make(chan error, 2)
		never := func(context.Context) (bool, error) { return false, nil }
		go func() { _, err := h.Poll(context.Background(), time.Hour, []Key{DeviceKey(1)}, never); res <- err }()
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _, err := h.Poll(ctx, time.Hour, []Key{DeviceKey(2)}, never); res <- err }()
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-res, context.Canceled)
		h.Close()
		require.NoError(t, <-res, "a closing hub answers long-polls, empty")
		ok, err := h.Poll(context.Background(), time.Hour, []Key{DeviceKey(3)}, never)
		require.NoError(t, err)
		require.False(t, ok, "after Close, new polls return at once")
	})
}

func TestPollCheckError(t *testing.T) {
	h := NewHub()
	boom := errors.New("boom")
	_, err := h.Poll(context.Background(), time.Minute, []Key{DeviceKey(1)}, func(context.Context) (bool, error) { return false, boom })
	require.ErrorIs(t, err, boom)
	require.Zero(t, h.Len())
}

func TestObserveHearsEveryWake(t *testing.T) {
	h := NewHub()
	var got [][]Key
	stop := h.Observe(func(keys []Key) { got = append(got, keys) })
	h.Wake(OutboxKey("b.test"), DeviceKey(7))
	h.WakeAll()
	stop()
	h.Wake(OutboxKey("c.test"))
	require.Equal(t, [][]Key{{OutboxKey("b.test"), DeviceKey(7)}, nil}, got, "keys of each Wake, nil for WakeAll, nothing after stop")

	d, ok := OutboxDestination(OutboxKey("b.test:8448"))
	require.True(t, ok)
	require.Equal(t, "b.test:8448", d)
	_, ok = OutboxDestination(DeviceKey(7))
	require.False(t, ok)
	_, ok = OutboxDestination(Key("o"))
	require.False(t, ok)
}

// Observers hear of a wake-up before any waiter is signalled: a signalled
// waiter may act at once on another core, and what it does then
// (devicesync arms a quiet device before it reads) must come after the
// observers saw the wake-up (which made that device unquiet).
func TestObserversBeforeWaiters(t *testing.T) {
	h := NewHub()
	var order []string
	h.Observe(func(keys []Key) {
		if keys == nil {
			order = append(order, "observe all")
		} else {
			order = append(order, "observe")
		}
	})
	w := h.register(&Waiter{hub: h, keys: []Key{DeviceKey(1)}, c: make(chan struct{}, 1), fn: func() { order = append(order, "signal") }})
	defer w.Close()
	h.Wake(DeviceKey(1))
	h.WakeAll()
	if want := []string{"observe", "signal", "observe all", "signal"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
}
