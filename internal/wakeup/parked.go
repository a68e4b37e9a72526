package wakeup

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Parked is a long-poll that waits without a goroutine (Hub.Park). Its
// checks run on the hub's workers, at most MaxParkedWorkers goroutines
// whatever the number of polls: the first at once, the next after each
// wake-up. When a check finds something or fails, the timeout passes, the
// hub closes or Cancel is called, finish is called once, on a worker, with
// what the poll came to. That is how an HTTP/1.1 long-poll waits with
// nothing but its socket and a few small objects (internal/httpapi/park.go).
type Parked struct {
	h       *Hub
	w       *Waiter
	timeout time.Duration
	check   func(ctx context.Context) (bool, error)

	mu       sync.Mutex
	ctx      context.Context
	finish   func(done bool, err error)
	timer    *time.Timer
	running  bool  // queued for or held by a worker
	again    bool  // something happened while it was
	timedOut bool  // the timeout passed
	canceled error // Cancel's error
	checked  bool  // the first check has run
	ended    bool
	// detached is false while a Begin's caller still waits on its own
	// goroutine (on the waiter's channel); signals then only fill that.
	detached bool
	// deadline is when the poll times out (Begin's polls).
	deadline time.Time
}

// Park registers for keys and queues the poll's first check. Checks run
// with ctx, which must outlive the caller's request; finish is called as
// Parked says. As with Poll, the registration comes before the first
// check, so no wake-up after it is missed, and the first check always runs,
// however long it queued. With a timeout of 0 the poll is that one check
// (it registers nothing: it is no long-poll).
func (h *Hub) Park(ctx context.Context, timeout time.Duration, keys []Key, check func(ctx context.Context) (done bool, err error), finish func(done bool, err error)) *Parked {
	p := &Parked{h: h, timeout: timeout, check: check, ctx: ctx, finish: finish, detached: true}
	if timeout > 0 {
		p.w = &Waiter{hub: h, keys: keys, fn: p.signal} // no channel: nobody selects on it
		// Registered before p.mu is taken: a wake-up calls signal with
		// the hub locked, and signal takes p.mu.
		h.register(p.w)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if timeout > 0 && !p.ended {
		p.timer = time.AfterFunc(p.timeout, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.timedOut = true
			p.kickLocked()
		})
	}
	p.kickLocked()
	return p
}

// Begin registers for keys and runs the first check on the caller's
// goroutine, as Poll does. When it is done or fails, or timeout is not
// positive, the registration is dropped and a nil Parked is returned with
// check's answer. Otherwise the caller lingers (Linger), then waits on its
// goroutine (Wait) or detaches the poll (Detach).
func (h *Hub) Begin(ctx context.Context, timeout time.Duration, keys []Key, check func(ctx context.Context) (done bool, err error)) (*Parked, bool, error) {
	return h.begin(ctx, timeout, keys, check, false)
}

// begin is Begin; shallow runs the checks on goroutines of their own
// (runShallow), for a caller that will wait on its goroutine for long.
func (h *Hub) begin(ctx context.Context, timeout time.Duration, keys []Key, check func(ctx context.Context) (done bool, err error), shallow bool) (*Parked, bool, error) {
	if timeout <= 0 {
		done, err := check(ctx)
		return nil, done, err
	}
	p := &Parked{h: h, timeout: timeout, check: check, checked: true, deadline: time.Now().Add(timeout)}
	p.w = h.register(&Waiter{hub: h, keys: keys, c: make(chan struct{}, 1), fn: p.signal})
	done, err := p.run1(ctx, shallow)
	if err != nil || done {
		p.w.Close()
		return nil, done, err
	}
	return p, false, nil
}

// Linger waits on the caller's goroutine for at most d, checking again
// after every wake-up, as Poll does. more is true when the poll is still
// waiting after d (the caller then Waits or Detaches); otherwise it has
// ended, with done and err as Poll's.
func (p *Parked) Linger(ctx context.Context, d time.Duration) (done bool, err error, more bool) {
	return p.linger(ctx, d, false)
}

// run1 runs one check on the caller's goroutine, or with shallow on one of
// its own.
func (p *Parked) run1(ctx context.Context, shallow bool) (bool, error) {
	if shallow {
		return runShallow(ctx, p.check)
	}
	return p.check(ctx)
}

func (p *Parked) linger(ctx context.Context, d time.Duration, shallow bool) (done bool, err error, more bool) {
	left := time.Until(p.deadline)
	timer := time.NewTimer(min(d, left))
	defer timer.Stop()
	for {
		select {
		case <-p.w.C():
		case <-timer.C:
			if d < left {
				return false, nil, true
			}
			p.w.Close()
			return false, nil, false
		case <-p.h.closed:
			p.w.Close()
			return false, nil, false
		case <-ctx.Done():
			p.w.Close()
			return false, ctx.Err(), false
		}
		if done, err := p.run1(ctx, shallow); err != nil || done {
			p.w.Close()
			return done, err, false
		}
	}
}

// Wait waits on the caller's goroutine until the poll ends, as Poll does.
func (p *Parked) Wait(ctx context.Context) (bool, error) {
	done, err, _ := p.linger(ctx, time.Until(p.deadline)+time.Second, true)
	return done, err
}

// Detach hands a poll of Begin's to the hub's workers: it waits without a
// goroutine, later checks run with ctx, and finish is called as Parked
// says.
func (p *Parked) Detach(ctx context.Context, finish func(done bool, err error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ctx, p.finish, p.detached = ctx, finish, true
	p.timer = time.AfterFunc(time.Until(p.deadline), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.timedOut = true
		p.kickLocked()
	})
	select {
	case <-p.w.C(): // woken since the caller last looked
		p.kickLocked()
	case <-p.h.closed:
		p.kickLocked()
	default:
		if p.canceled != nil {
			p.kickLocked()
		}
	}
}

// Cancel ends the poll: finish gets err (unless the poll has ended
// already). The owner calls it when the client has gone away.
func (p *Parked) Cancel(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.canceled = err
	if p.detached {
		p.kickLocked()
	}
}

// signal is the waiter's fn: called with the hub locked, so it only
// schedules.
func (p *Parked) signal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.detached {
		p.kickLocked()
	}
}

// kickLocked makes sure a worker looks at the poll after this moment.
func (p *Parked) kickLocked() {
	if p.ended {
		return
	}
	if p.running {
		p.again = true
		return
	}
	p.running = true
	p.h.enqueue(p)
}

// runOnce checks the poll once, or ends it; if something happened while it
// checked, it queues the poll again (behind the others, so one busy device
// cannot hold a worker).
func (p *Parked) runOnce() {
	p.mu.Lock()
	p.again = false
	timedOut, canceled, first := p.timedOut, p.canceled, !p.checked
	p.checked = true
	p.mu.Unlock()
	var (
		done bool
		err  error
		end  = true
	)
	select {
	case <-p.h.closed:
		if first {
			// Even a closing hub's answer carries a position.
			done, err = p.safeCheck()
		}
	default:
		switch {
		case canceled != nil:
			err = canceled
		case timedOut && !first:
		default:
			done, err = p.safeCheck()
			end = done || err != nil || timedOut || p.timeout <= 0
		}
	}
	if end {
		p.end(done, err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.again {
		p.again = false
		p.h.enqueue(p)
		return
	}
	p.running = false
}

// safeCheck runs the check on a worker: a panic in it ends this poll with
// an error (its owner answers 500) instead of the process, as net/http's
// recovery would for a request on its own goroutine.
func (p *Parked) safeCheck() (done bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			done, err = false, fmt.Errorf("long-poll check panicked: %v", v)
		}
	}()
	return p.check(p.ctx)
}

// MaxParkedWorkers bounds the goroutines checking parked polls (and
// running Go's functions). Checks
// read the database, whose pool is the real bound; a herd of polls (every
// client reconnecting after a restart) waits in the queue as a few small
// objects each, not as thousands of goroutines queueing for a connection.
const MaxParkedWorkers = 32

// task is what the workers run: a parked poll's check, or Go's function.
type task interface{ run() }

func (p *Parked) run() { p.runOnce() }

type funcTask func()

func (f funcTask) run() { f() }

// Go runs f on one of the workers of parked polls, after the work queued
// before it. It is for work that leads to a Park and should queue with
// the polls rather than hold a goroutine of its own while it waits for
// the database (internal/httpapi's parked /sync authenticates there).
func (h *Hub) Go(f func()) { h.enqueue(funcTask(f)) }

// Queued is how many checks and functions wait for a worker.
func (h *Hub) Queued() int {
	h.runMu.Lock()
	defer h.runMu.Unlock()
	return len(h.runq)
}

// enqueue queues t for a worker, starting one if fewer than
// MaxParkedWorkers run. Workers exit when the queue is empty.
func (h *Hub) enqueue(t task) {
	h.runMu.Lock()
	h.runq = append(h.runq, t)
	start := h.workers < MaxParkedWorkers
	if start {
		h.workers++
	}
	h.runMu.Unlock()
	if start {
		go h.work()
	}
}

func (h *Hub) work() {
	for {
		h.runMu.Lock()
		if len(h.runq) == 0 {
			h.workers--
			h.runMu.Unlock()
			return
		}
		t := h.runq[0]
		h.runq[0] = nil
		h.runq = h.runq[1:]
		h.runMu.Unlock()
		t.run()
	}
}

func (p *Parked) end(done bool, err error) {
	p.mu.Lock()
	p.ended = true
	if p.timer != nil {
		p.timer.Stop()
	}
	finish := p.finish
	p.mu.Unlock()
	if p.w != nil {
		p.w.Close()
	}
	finish(done, err)
}
