package wakeup

import (
	"context"
	"sync"
	"time"
)

// Parked is a long-poll between its first check and its answer. Begin makes
// one; its owner then either waits for it on its own goroutine (Wait, which
// is all Poll does) or detaches it (Detach): a detached poll holds no
// goroutine while it waits. A wake-up, its timeout, Cancel or the hub's
// closing starts a goroutine that checks again, and finish is called once,
// on such a goroutine, with what the poll came to. That is how an HTTP/1.1
// long-poll parks with nothing but its connection and a few small objects
// (internal/httpapi/park.go).
type Parked struct {
	h       *Hub
	w       *Waiter
	timeout time.Duration
	check   func(ctx context.Context) (bool, error)

	mu       sync.Mutex
	detached bool
	ctx      context.Context
	finish   func(done bool, err error)
	timer    *time.Timer
	running  bool  // a goroutine is checking (or finishing)
	again    bool  // something happened while it was
	timedOut bool  // the timeout passed
	canceled error // Cancel's error
	ended    bool
}

// Begin registers for keys and calls check once, as Poll does. When check
// is done, fails, or timeout is not positive, it returns a nil Parked with
// check's answer. Otherwise the caller must Wait for the returned Parked or
// Detach it.
func (h *Hub) Begin(ctx context.Context, timeout time.Duration, keys []Key, check func(ctx context.Context) (done bool, err error)) (*Parked, bool, error) {
	if timeout <= 0 {
		done, err := check(ctx)
		return nil, done, err
	}
	p := &Parked{h: h, timeout: timeout, check: check}
	p.w = h.register(&Waiter{hub: h, keys: keys, c: make(chan struct{}, 1), fn: p.signal})
	done, err := runShallow(ctx, check)
	if err != nil || done {
		p.w.Close()
		return nil, done, err
	}
	return p, false, nil
}

// Wait waits on the caller's goroutine until check is done, the timeout
// passes (done false), the hub closes (done false) or ctx ends (ctx.Err()),
// checking again after every wake-up.
func (p *Parked) Wait(ctx context.Context) (bool, error) {
	defer p.w.Close()
	timer := time.NewTimer(p.timeout)
	defer timer.Stop()
	for {
		select {
		case <-p.w.C():
		case <-timer.C:
			return false, nil
		case <-p.h.closed:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
		done, err := runShallow(ctx, p.check)
		if err != nil || done {
			return done, err
		}
	}
}

// Detach lets the poll wait without a goroutine. Later checks run with ctx,
// which must outlive the caller's request. finish is called exactly once,
// on a goroutine of the hub's making: with done true (or check's error)
// when a check after a wake-up found something; with done false when the
// timeout passed or the hub closed; with Cancel's error after Cancel.
func (p *Parked) Detach(ctx context.Context, finish func(done bool, err error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.detached, p.ctx, p.finish = true, ctx, finish
	p.timer = time.AfterFunc(p.timeout, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.timedOut = true
		p.kickLocked()
	})
	select {
	case <-p.w.C():
		// Woken between the first check and now.
		p.kickLocked()
	case <-p.h.closed:
		p.kickLocked()
	default:
	}
}

// Cancel ends a detached poll: finish gets err (unless the poll has ended
// already). The owner calls it when the client has gone away.
func (p *Parked) Cancel(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.canceled = err
	p.kickLocked()
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

// kickLocked makes sure a goroutine looks at the poll after this moment.
func (p *Parked) kickLocked() {
	if p.ended {
		return
	}
	if p.running {
		p.again = true
		return
	}
	p.running = true
	go p.run()
}

// run checks until nothing new happened while it did, or the poll ends.
func (p *Parked) run() {
	for {
		p.mu.Lock()
		p.again = false
		timedOut, canceled := p.timedOut, p.canceled
		p.mu.Unlock()
		var (
			done bool
			err  error
			end  = true
		)
		select {
		case <-p.h.closed:
		default:
			switch {
			case canceled != nil:
				err = canceled
			case timedOut:
			default:
				done, err = p.check(p.ctx)
				end = done || err != nil
			}
		}
		if end {
			p.end(done, err)
			return
		}
		p.mu.Lock()
		if !p.again {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

func (p *Parked) end(done bool, err error) {
	p.mu.Lock()
	p.ended = true
	p.timer.Stop()
	finish := p.finish
	p.mu.Unlock()
	p.w.Close()
	finish(done, err)
}
