package wakeup

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

type parkResult struct {
	done bool
	err  error
}

func park(h *Hub, timeout time.Duration, key Key, check func(context.Context) (bool, error)) (*Parked, chan parkResult) {
	c := make(chan parkResult, 2) // 2: a second finish would be seen
	p := h.Park(context.Background(), timeout, []Key{key}, check, func(done bool, err error) { c <- parkResult{done, err} })
	return p, c
}

// A parked poll whose first check finds something finishes at once, on a
// worker, and leaves the hub.
func TestParkFirstCheckDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		_, c := park(h, time.Minute, DeviceKey(1), func(context.Context) (bool, error) { return true, nil })
		require.Equal(t, parkResult{done: true}, <-c)
		synctest.Wait()
		require.Equal(t, 0, h.Len())
		require.Empty(t, c, "finish is called once")
	})
}

// The registration comes before the first check: a wake-up while it runs
// makes a second check, which finds the message.
func TestParkRegistersBeforeFirstCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		var checks atomic.Int32
		_, c := park(h, time.Minute, DeviceKey(7), func(context.Context) (bool, error) {
			if checks.Add(1) == 1 {
				h.Wake(DeviceKey(7))
				return false, nil
			}
			return true, nil
		})
		require.Equal(t, parkResult{done: true}, <-c)
		require.Equal(t, int32(2), checks.Load())
	})
}

// Between checks a parked poll holds no goroutine; a wake-up of its key
// checks again, another key's does not, and a check that finds nothing
// keeps it parked.
func TestParkWaitsWithoutAGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		var checks atomic.Int32
		found := atomic.Bool{}
		_, c := park(h, time.Minute, DeviceKey(1), func(context.Context) (bool, error) {
			checks.Add(1)
			return found.Load(), nil
		})
		synctest.Wait()
		require.Equal(t, int32(1), checks.Load())
		require.Equal(t, 1, h.Len())
		base := runtime.NumGoroutine()

		h.Wake(DeviceKey(2))
		synctest.Wait()
		require.Equal(t, int32(1), checks.Load(), "another device's wake-up")

		h.Wake(DeviceKey(1)) // spurious: nothing found
		synctest.Wait()
		require.Equal(t, int32(2), checks.Load())
		require.Empty(t, c)
		require.Equal(t, base, runtime.NumGoroutine(), "no goroutine left waiting")

		found.Store(true)
		h.Wake(DeviceKey(1))
		require.Equal(t, parkResult{done: true}, <-c)
		require.Equal(t, 0, h.Len())
	})
}

// The timeout ends a parked poll with done false and no further check; so
// does the hub's closing; Cancel ends it with its error.
func TestParkEnds(t *testing.T) {
	nothing := func(context.Context) (bool, error) { return false, nil }
	t.Run("timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := NewHub()
			_, c := park(h, 30*time.Second, DeviceKey(1), nothing)
			start := time.Now()
			require.Equal(t, parkResult{}, <-c)
			require.Equal(t, 30*time.Second, time.Since(start))
			require.Equal(t, 0, h.Len())
		})
	})
	t.Run("hub closed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := NewHub()
			_, c := park(h, time.Minute, DeviceKey(1), nothing)
			synctest.Wait()
			h.Close()
			require.Equal(t, parkResult{}, <-c)
			var checks atomic.Int32
			_, c = park(h, time.Minute, DeviceKey(1), func(context.Context) (bool, error) {
				checks.Add(1)
				return false, nil
			})
			require.Equal(t, parkResult{}, <-c)
			require.Equal(t, int32(1), checks.Load(), "a poll parked after the close is answered after its first check (its answer needs a position)")
		})
	})
	t.Run("cancel", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := NewHub()
			p, c := park(h, time.Minute, DeviceKey(1), nothing)
			synctest.Wait()
			gone := errors.New("gone")
			p.Cancel(gone)
			require.Equal(t, parkResult{err: gone}, <-c)
			p.Cancel(gone)
			synctest.Wait()
			require.Empty(t, c, "finish is called once")
		})
	})
	t.Run("check error", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := NewHub()
			boom := errors.New("boom")
			_, c := park(h, time.Minute, DeviceKey(1), func(context.Context) (bool, error) { return false, boom })
			require.Equal(t, parkResult{err: boom}, <-c)
		})
	})
}

// However many polls are parked and woken at once, at most
// MaxParkedWorkers goroutines check them, and every one is answered.
func TestParkBoundsWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		const n = 500
		release := make(chan struct{})
		var running, most atomic.Int32
		results := make(chan parkResult, n)
		for i := range n {
			h.Park(context.Background(), time.Minute, []Key{DeviceKey(int64(i))}, func(context.Context) (bool, error) {
				now := running.Add(1)
				for {
					m := most.Load()
					if now <= m || most.CompareAndSwap(m, now) {
						break
					}
				}
				<-release
				running.Add(-1)
				return true, nil
			}, func(done bool, err error) { results <- parkResult{done, err} })
		}
		synctest.Wait()
		require.Equal(t, int32(MaxParkedWorkers), running.Load())
		close(release)
		for range n {
			require.Equal(t, parkResult{done: true}, <-results)
		}
		require.LessOrEqual(t, most.Load(), int32(MaxParkedWorkers))
		synctest.Wait()
		require.Equal(t, 0, h.workers, "workers exit when the queue is empty")
	})
}

// A poll with no timeout is one check, on a worker, and registers nothing.
func TestParkZeroTimeoutChecksOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		var checks atomic.Int32
		registered := false
		h.OnWaitersChanged = func(int) { registered = true }
		_, c := park(h, 0, DeviceKey(1), func(context.Context) (bool, error) {
			checks.Add(1)
			return false, nil
		})
		require.Equal(t, parkResult{}, <-c)
		synctest.Wait()
		require.Equal(t, int32(1), checks.Load())
		require.False(t, registered)
	})
}

// A poll whose timeout passes while its first check is still queued
// behind others gets that check all the same: its answer needs the
// position the check reads.
func TestParkFirstCheckRunsAfterTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		release := make(chan struct{})
		for i := range MaxParkedWorkers {
			h.Park(context.Background(), time.Hour, []Key{DeviceKey(int64(100 + i))}, func(context.Context) (bool, error) {
				<-release
				return true, nil
			}, func(bool, error) {})
		}
		var checks atomic.Int32
		_, c := park(h, time.Second, DeviceKey(1), func(context.Context) (bool, error) {
			checks.Add(1)
			return false, nil
		})
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.Equal(t, int32(0), checks.Load(), "still queued")
		close(release)
		require.Equal(t, parkResult{}, <-c)
		require.Equal(t, int32(1), checks.Load())
	})
}

// Begin checks on the caller's goroutine; Linger waits there for a while,
// checking after wake-ups; Detach then waits without a goroutine until the
// original timeout, and a wake-up that came in between is not lost.
func TestBeginLingerDetach(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		var checks atomic.Int32
		found := atomic.Bool{}
		check := func(context.Context) (bool, error) {
			checks.Add(1)
			return found.Load(), nil
		}
		p, done, err := h.Begin(context.Background(), time.Minute, []Key{DeviceKey(1)}, check)
		require.NoError(t, err)
		require.False(t, done)
		require.NotNil(t, p)

		start := time.Now()
		done, err, more := p.Linger(context.Background(), time.Second)
		require.NoError(t, err)
		require.False(t, done)
		require.True(t, more, "still waiting after the linger")
		require.Equal(t, time.Second, time.Since(start))
		require.Equal(t, int32(1), checks.Load())

		found.Store(true)
		h.Wake(DeviceKey(1)) // between the linger and the detach
		c := make(chan parkResult, 2)
		p.Detach(context.Background(), func(done bool, err error) { c <- parkResult{done, err} })
		require.Equal(t, parkResult{done: true}, <-c)
		require.Equal(t, int32(2), checks.Load())
		require.Equal(t, 0, h.Len())
	})
}

// A detached poll of Begin's times out at Begin's deadline, not a full
// timeout after the detach; a Cancel that came before the detach ends it.
func TestDetachKeepsDeadlineAndCancel(t *testing.T) {
	nothing := func(context.Context) (bool, error) { return false, nil }
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		start := time.Now()
		p, _, _ := h.Begin(context.Background(), 10*time.Second, []Key{DeviceKey(1)}, nothing)
		_, _, more := p.Linger(context.Background(), 4*time.Second)
		require.True(t, more)
		c := make(chan parkResult, 1)
		p.Detach(context.Background(), func(done bool, err error) { c <- parkResult{done, err} })
		require.Equal(t, parkResult{}, <-c)
		require.Equal(t, 10*time.Second, time.Since(start))
	})
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		p, _, _ := h.Begin(context.Background(), time.Minute, []Key{DeviceKey(1)}, nothing)
		gone := errors.New("gone")
		p.Cancel(gone)
		c := make(chan parkResult, 1)
		p.Detach(context.Background(), func(done bool, err error) { c <- parkResult{done, err} })
		require.Equal(t, parkResult{err: gone}, <-c)
	})
}

// A linger as long as the timeout ends the poll (more false).
func TestLingerToTheTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		p, _, _ := h.Begin(context.Background(), time.Second, []Key{DeviceKey(1)}, func(context.Context) (bool, error) { return false, nil })
		done, err, more := p.Linger(context.Background(), time.Minute)
		require.NoError(t, err)
		require.False(t, done)
		require.False(t, more)
		require.Equal(t, 0, h.Len())
	})
}

// A check that panics on a worker ends its poll with an error, not the
// process.
func TestParkCheckPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHub()
		_, c := park(h, time.Minute, DeviceKey(1), func(context.Context) (bool, error) { panic("boom") })
		r := <-c
		require.False(t, r.done)
		require.ErrorContains(t, r.err, "boom")
		synctest.Wait()
		require.Equal(t, 0, h.Len())
	})
}
