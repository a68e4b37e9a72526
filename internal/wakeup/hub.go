// Package wakeup is the in-process waiter map behind long-polling /sync.
//
// A waiter registers the keys it cares about (its device's inbox, its user's
// device-list feed, a federation destination's outbox), re-checks the store,
// and only then waits. Wake-ups are hints: whoever is woken must read the store
// to learn what happened, so a spurious wake-up costs one query and a lost one
// is covered by WakeAll after the notification source reconnects.
package wakeup

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Key names one thing a waiter can wait for.
type Key string

// DeviceKey is woken when a message commits for the device with this numeric id
// (or when the device is deleted).
func DeviceKey(nid int64) Key { return Key("d" + strconv.FormatInt(nid, 36)) }

// UserKey is woken when the device list visible to this local user changes.
func UserKey(userID string) Key { return Key("u" + userID) }

// OutboxKey is woken when EDUs are queued for this federation destination.
func OutboxKey(destination string) Key { return Key("o" + destination) }

// OutboxDestination returns the destination of an OutboxKey.
func OutboxDestination(k Key) (string, bool) {
	if len(k) > 1 && k[0] == 'o' {
		return string(k[1:]), true
	}
	return "", false
}

// Hub maps keys to waiters. It is safe for concurrent use.
type Hub struct {
	mu      sync.Mutex
	waiters map[Key]waiterSet
	all     map[*Waiter]struct{}
	closed  chan struct{}
	once    sync.Once

	// runq holds parked polls' checks (and Go's functions) waiting for a
	// worker.
	runMu   sync.Mutex
	runq    []task
	workers int

	observers map[int]func(keys []Key)
	nextObs   int

	// OnWaitersChanged, when set, is called with the number of registered
	// waiters after every change (used for the active long-poll gauge).
	OnWaitersChanged func(n int)

	deaf atomic.Bool
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{
		waiters: make(map[Key]waiterSet),
		all:     make(map[*Waiter]struct{}),
		closed:  make(chan struct{}),
	}
}

// waiterSet is the waiters of one key. Most keys have one (a device's
// inbox) or a few (a user's devices), and 10 000 long-polls hold 20 000
// keys, so one waiter is held without a map of its own.
type waiterSet struct {
	one  *Waiter
	many map[*Waiter]struct{}
}

func (s waiterSet) add(w *Waiter) waiterSet {
	switch {
	case s.many != nil:
		s.many[w] = struct{}{}
	case s.one == nil || s.one == w:
		s.one = w
	default:
		s.many = map[*Waiter]struct{}{s.one: {}, w: {}}
		s.one = nil
	}
	return s
}

// remove returns the set without w, and false when it is empty.
func (s waiterSet) remove(w *Waiter) (waiterSet, bool) {
	if s.many != nil {
		delete(s.many, w)
		return s, len(s.many) > 0
	}
	if s.one == w {
		s.one = nil
	}
	return s, s.one != nil
}

func (s waiterSet) each(fn func(*Waiter)) {
	if s.one != nil {
		fn(s.one)
	}
	for w := range s.many {
		fn(w)
	}
}

// Waiter is one registration. Its channel receives (at most one buffered)
// signal whenever one of its keys is woken.
type Waiter struct {
	hub  *Hub
	keys []Key
	c    chan struct{}
	// fn, when set, is also called on every signal (Hub.Park), with the
	// hub locked.
	fn func()
}

// C returns the channel that is signalled on a wake-up.
func (w *Waiter) C() <-chan struct{} { return w.c }

// Register adds a waiter for keys. Call Close when done.
func (h *Hub) Register(keys ...Key) *Waiter {
	return h.register(&Waiter{hub: h, keys: keys, c: make(chan struct{}, 1)})
}

func (h *Hub) register(w *Waiter) *Waiter {
	keys := w.keys
	h.mu.Lock()
	for _, k := range keys {
		h.waiters[k] = h.waiters[k].add(w)
	}
	h.all[w] = struct{}{}
	n := len(h.all)
	h.mu.Unlock()
	if h.OnWaitersChanged != nil {
		h.OnWaitersChanged(n)
	}
	return w
}

// Close removes the waiter from the hub. It is idempotent.
func (w *Waiter) Close() {
	h := w.hub
	h.mu.Lock()
	if _, ok := h.all[w]; !ok {
		h.mu.Unlock()
		return
	}
	for _, k := range w.keys {
		if set, ok := h.waiters[k].remove(w); ok {
			h.waiters[k] = set
		} else {
			delete(h.waiters, k)
		}
	}
	delete(h.all, w)
	n := len(h.all)
	h.mu.Unlock()
	if h.OnWaitersChanged != nil {
		h.OnWaitersChanged(n)
	}
}

func (w *Waiter) signal() {
	select {
	case w.c <- struct{}{}:
	default:
	}
	if w.fn != nil {
		w.fn()
	}
}

// Wake tells the observers, then signals every waiter registered for any
// of keys. Observers first: a waiter may run on another core the moment it
// is signalled, and what it does then (devicesync arms a quiet device
// before it reads) must come after the observers have seen this wake-up.
func (h *Hub) Wake(keys ...Key) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, fn := range h.observers {
		fn(keys)
	}
	for _, k := range keys {
		h.waiters[k].each((*Waiter).signal)
	}
}

// WakeAll signals every waiter, e.g. after the notification source
// reconnected and may have missed notifications. Observers are called with
// nil keys, first, as in Wake.
func (h *Hub) WakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, fn := range h.observers {
		fn(nil)
	}
	for w := range h.all {
		w.signal()
	}
}

// Observe calls fn with the keys of every Wake, and with nil on WakeAll
// (anything may have happened). It is for consumers that do not know their
// keys in advance, such as the federation sender, which hears of every
// destination with new EDUs. fn runs with the hub locked: it must be quick
// and must not call the hub. The returned function stops the calls.
func (h *Hub) Observe(fn func(keys []Key)) (stop func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.observers == nil {
		h.observers = make(map[int]func([]Key))
	}
	id := h.nextObs
	h.nextObs++
	h.observers[id] = fn
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.observers, id)
	}
}

// SetDeaf says whether the hub may be missing wake-ups from elsewhere: its
// notification source (PostgreSQL's LISTEN connection) is not connected,
// so commits of other replicas, and NOTIFYs of this one, go unheard until
// the WakeAll that follows its reconnection. A new hub hears everything
// (its wake-ups are in-process, as on SQLite); a source that can miss
// some sets it deaf until it listens. Waiters are unaffected: they are
// woken by WakeAll. Consumers that also rely on having heard every wake-up
// between two requests (devicesync's quiet devices) rely on it only while
// the hub is not deaf.
func (h *Hub) SetDeaf(deaf bool) { h.deaf.Store(deaf) }

// Deaf reports SetDeaf's latest word.
func (h *Hub) Deaf() bool { return h.deaf.Load() }

// Len returns the number of registered waiters.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.all)
}

// Close makes every current and future Poll return at once with no result, as
// a server shutting down answers its long-polls.
func (h *Hub) Close() {
	h.once.Do(func() {
		close(h.closed)
		// Parked polls (Hub.Park) have no goroutine selecting on closed:
		// a signal makes each check in and answer.
		h.mu.Lock()
		defer h.mu.Unlock()
		for w := range h.all {
			if w.fn != nil {
				w.fn()
			}
		}
	})
}

// Closing returns a channel closed when the hub is closed.
func (h *Hub) Closing() <-chan struct{} { return h.closed }

// runShallow runs check on a goroutine of its own and waits for it. A
// long-poll parks its goroutine for up to minutes, and a goroutine's stack
// only shrinks back when little of it is in use: had the parked goroutine run
// the database queries of check itself, their deep call chains would leave it
// holding a 16 KiB stack instead of 8 KiB, which across 10 000 waiting
// long-polls is 80 MB (BenchmarkWaitingSyncMemory in internal/httpapi measures it).
func runShallow(ctx context.Context, check func(ctx context.Context) (bool, error)) (bool, error) {
	type result struct {
		done bool
		err  error
	}
	c := make(chan result, 1)
	go func() {
		done, err := check(ctx)
		c <- result{done, err}
	}()
	r := <-c
	return r.done, r.err
}

// Poll is the long-poll loop: it registers for keys, calls check, and, until
// check reports done, waits for a wake-up and checks again. It returns when
// check is done, when timeout has passed (with done false), when the hub is
// closing (done false), or when ctx ends (ctx.Err()).
//
// check is called at least once, after registration, so a change that commits
// between the caller's last read and the registration is never missed.
func (h *Hub) Poll(ctx context.Context, timeout time.Duration, keys []Key, check func(ctx context.Context) (done bool, err error)) (bool, error) {
	p, done, err := h.begin(ctx, timeout, keys, check, true)
	if p == nil {
		return done, err
	}
	return p.Wait(ctx)
}
