package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Parking lets an HTTP/1.1 long-poll wait with no goroutine and no buffers.
//
// net/http holds two goroutines and 8 KiB of bufio buffers for every
// connection with a request in flight, about 45 KB resident a waiting
// /sync, and nothing outside net/http changes that (docs/PERFORMANCE.md).
// So a /sync that finds nothing at its first check takes its connection
// over (Hijack): net/http's goroutines end, its buffers go, and what waits
// is the socket, the hub's registration, a timer and the request. When the
// poll ends (a wake-up that found something, the timeout, shutdown) a
// goroutine of the hub's writes the answer, the same bytes the handler
// would have written, and hands the connection back to net/http through
// the listener, which accepts it as if it were new: the next request on it
// is served as usual.
//
// While a connection is parked nobody reads it, so a client that goes away
// is noticed by a sweep that peeks at every parked socket (sweepInterval)
// instead of at once. HTTP/2 streams cannot be taken over and keep waiting
// on their goroutine, as do requests that asked to close the connection.
type Parking struct {
	log      *slog.Logger
	hub      *wakeup.Hub
	interval time.Duration

	mu     sync.Mutex
	ln     *parkingListener
	parked map[*parkedSync]struct{}
	closed bool
	// fresh are the connections handed back to net/http that have not
	// begun a request since (ConnState): at shutdown they are closed
	// (CloseFresh), as net/http closes its idle ones.
	fresh map[net.Conn]struct{}
	// lastHeader is the headers of the last parked poll (sharedHeader).
	lastHeader http.Header
	// standIns are the stand-in requests by method and route.
	standIns sync.Map
	// linger and lingering: syncLingering's time and slots.
	linger    time.Duration
	lingering chan struct{}
	// maxQueued bounds the work waiting for the hub's workers (park).
	maxQueued int
	// idleTimeout is how long a handed-back connection may wait for its
	// next request (ParkingConfig.Idle).
	idleTimeout time.Duration
	idle        *sync.Cond // signalled when parked empties
	stop        chan struct{}
}

// sweepInterval is how often parked connections are checked for a client
// that left: at most this long a closed socket and its poll linger.
const sweepInterval = 5 * time.Second

// lingerFor is how long a /sync of a remembered token waits on its own
// goroutine before it is parked, and lingerSlots how many may do so at
// once (syncLingering): about 11 MB of goroutines and buffers at most.
const (
	lingerFor   = 100 * time.Millisecond
	lingerSlots = 256
)

// maxQueued bounds the work waiting for the hub's workers: a parked
// request waits there until its token is checked, so without a bound a
// flood of requests with made-up tokens would queue as many as the
// connections allow. 65 536 is six times the herd of 10 000 clients
// reconnecting at once; a request over it is refused 429 with
// Retry-After, before anything is read from the database.
const maxQueued = 1 << 16

// writeTimeout bounds the write of a parked poll's answer.
const writeTimeout = 30 * time.Second

// errClientGone cancels a parked poll whose client closed the connection.
var errClientGone = errors.New("the client closed the connection")

// ParkingConfig tunes a Parking; zero fields take the defaults.
type ParkingConfig struct {
	// Sweep is how often parked connections are checked for a client
	// that left (sweepInterval).
	Sweep time.Duration
	// Linger is how long a /sync of a remembered token waits on its own
	// goroutine before it parks (lingerFor); negative: not at all.
	Linger time.Duration
	// LingerSlots is how many syncs may linger at once (lingerSlots).
	LingerSlots int
	// MaxQueued is how much work may wait for the hub's workers before
	// a request that would be parked is refused (maxQueued).
	MaxQueued int
	// Idle is how long a connection handed back after a parked answer may
	// wait for its next request: the server's http.Server.IdleTimeout, as
	// for any kept-alive connection. net/http takes a handed-back
	// connection for a new one and would give it only ReadHeaderTimeout;
	// with Idle set, that timeout runs from the next request's first byte
	// (backConn). Zero: net/http's timeouts as they are.
	Idle time.Duration
}

// NewParking returns a Parking that parks nothing until Listener has
// wrapped the API's listener. Parked requests' work runs on hub's workers
// (wakeup.Hub.Go, wakeup.Hub.Park).
func NewParking(log *slog.Logger, hub *wakeup.Hub, cfg ParkingConfig) *Parking {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = sweepInterval
	}
	if cfg.Linger == 0 {
		cfg.Linger = lingerFor
	}
	if cfg.LingerSlots <= 0 {
		cfg.LingerSlots = lingerSlots
	}
	if cfg.Linger < 0 {
		cfg.LingerSlots = 0
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = maxQueued
	}
	p := &Parking{log: log, hub: hub, interval: cfg.Sweep, linger: cfg.Linger, lingering: make(chan struct{}, cfg.LingerSlots), maxQueued: cfg.MaxQueued, idleTimeout: cfg.Idle,
		parked: map[*parkedSync]struct{}{}, stop: make(chan struct{})}
	p.idle = sync.NewCond(&p.mu)
	return p
}

// Listener wraps the API's listener, so parked connections can be handed
// back to the server that accepts from it. Call it once.
func (p *Parking) Listener(ln net.Listener) net.Listener {
	l := &parkingListener{Listener: ln, back: make(chan net.Conn), accepted: make(chan accepted), done: make(chan struct{})}
	go l.pump()
	p.mu.Lock()
	p.ln = l
	p.mu.Unlock()
	go p.sweep()
	return l
}

// Len is the number of parked long-polls.
func (p *Parking) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

// Close stops parking: later long-polls wait on their goroutines, and
// parked ones close their connection after answering. Call Drain to wait
// for their answers (the wake-up hub's Close makes them answer).
func (p *Parking) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.stop)
	}
}

// Drain waits until every parked long-poll has answered, or ctx ends.
func (p *Parking) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		p.mu.Lock()
		for len(p.parked) > 0 {
			p.idle.Wait()
		}
		p.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// parkable says whether r's connection can be taken over: HTTP/1.1 that
// stays open (an HTTP/1.0 client or "Connection: close" gets the answer on
// its goroutine, as before).
func (p *Parking) parkable(r *http.Request) bool {
	if p == nil || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Close {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ln != nil && !p.closed
}

// lingerSlot takes one of the slots of syncs waiting on their goroutine
// before they park; false when all are taken. releaseLinger gives it back.
func (p *Parking) lingerSlot() bool {
	select {
	case p.lingering <- struct{}{}:
		return true
	default:
		return false
	}
}

func (p *Parking) releaseLinger() { <-p.lingering }

// parkedSync is one parked /sync: its connection, and what is needed to
// answer on it.
type parkedSync struct {
	p    *Parking
	conn net.Conn
	// prefix is what the client sent after the request (pipelining), to
	// be read before the socket when the connection is handed back.
	prefix []byte
	// header is what the middleware set for the answer before the park,
	// shared with other parked polls: read only.
	header http.Header
	// req stands in for the request when answering: its method and a
	// context with its route (shared, read only).
	req *http.Request
	rec *statusRecorder

	mu       sync.Mutex
	wait     *devicesync.Waiting
	finished bool // the answer is being written: the sweep keeps off
}

// park takes the connection of a /sync long-poll over and queues start on
// the wake-up hub's workers, with the parked request; start must end with
// a call of its respond or abandon, now or later (after a devicesync.Park,
// whose Waiting it hands to setWait). park returns false, having changed
// nothing, when it cannot (then the caller serves the request as usual),
// and true when it took the request: parked it, or refused it 429 because
// too much work waits for the workers (maxQueued).
func (p *Parking) park(w http.ResponseWriter, r *http.Request, start func(ps *parkedSync)) bool {
	if !p.parkable(r) {
		return false
	}
	if p.hub.Queued() >= p.maxQueued {
		e := matrix.Errorf(matrix.LimitExceeded, "Too many syncs are waiting for the server; retry shortly.")
		e.RetryAfter = time.Second
		writeError(w, r, p.log, e)
		return true
	}
	rec := recorderOf(w)
	if rec == nil {
		return false
	}
	route := routePattern(r)
	header := p.sharedHeader(w.Header())
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	ps := &parkedSync{p: p, conn: conn, header: header, rec: rec, req: p.standIn(route, r.Method)}
	if n := brw.Reader.Buffered(); n > 0 {
		ps.prefix, _ = brw.Reader.Peek(n)
		ps.prefix = bytes.Clone(ps.prefix)
	}
	rec.detach(route)

	p.mu.Lock()
	p.parked[ps] = struct{}{}
	p.mu.Unlock()
	p.hub.Go(func() {
		defer ps.recoverWorker()
		start(ps)
	})
	return true
}

// recoverWorker answers a parked request whose work panicked on a worker
// (its start, or the answer when its poll ended) with 500, as the observe
// middleware does for a handler, instead of losing the process: workers
// run under no middleware. Deferred, on the worker.
func (ps *parkedSync) recoverWorker() {
	v := recover()
	if v == nil {
		return
	}
	ps.p.log.Error("parked request panicked", "route", ps.rec.route, "panic", v)
	ps.mu.Lock()
	finished := ps.finished
	ps.mu.Unlock()
	if !finished {
		ps.respond(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusInternalServerError, errorBody{Errcode: matrix.Unknown, Error: "Internal server error."})
		})
	}
}

// ctx is the context a parked request's work runs with: it never ends.
func (ps *parkedSync) ctx() context.Context { return ps.req.Context() }

// setWait registers the parked sync, for the sweep to cancel when the
// client has gone.
func (ps *parkedSync) setWait(w *devicesync.Waiting) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.wait = w
}

// standIn returns the request parked answers of route and method are
// written and logged for. The request's own context ends when its handler
// returns, and the router reuses its route context; the stand-in carries a
// context that never ends, with a route context of its own.
func (p *Parking) standIn(route, method string) *http.Request {
	key := method + " " + route
	if r, ok := p.standIns.Load(key); ok {
		return r.(*http.Request)
	}
	rctx := chi.NewRouteContext()
	rctx.RoutePatterns = []string{route}
	ctx := context.WithValue(context.Background(), chi.RouteCtxKey, rctx)
	r, _ := p.standIns.LoadOrStore(key, (&http.Request{Method: method}).WithContext(ctx))
	return r.(*http.Request)
}

// sharedHeader returns a read-only copy of h, the same copy for every
// parked poll whose middleware set the same headers (all of them, today:
// the CORS headers).
func (p *Parking) sharedHeader(h http.Header) http.Header {
	p.mu.Lock()
	defer p.mu.Unlock()
	if headersEqual(p.lastHeader, h) {
		return p.lastHeader
	}
	p.lastHeader = h.Clone()
	return p.lastHeader
}

func headersEqual(a, b http.Header) bool {
	if a == nil || len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || !slices.Equal(av, bv) {
			return false
		}
	}
	return true
}

// recorderOf finds the observe middleware's recorder under w.
func recorderOf(w http.ResponseWriter) *statusRecorder {
	for {
		switch x := w.(type) {
		case *statusRecorder:
			return x
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return nil
		}
	}
}

// abandon ends a parked request whose client has gone: nothing is
// written, and it is recorded as 499.
func (ps *parkedSync) abandon() {
	ps.end()
	_ = ps.conn.Close()
	ps.rec.finishDetached(ps.req, 499, 0)
}

// respond answers a parked request with what write writes, on its
// connection, and hands the connection back to the server. Once.
func (ps *parkedSync) respond(write func(http.ResponseWriter, *http.Request)) {
	ps.end()
	status, n := 499, 0 // the client left and nothing was written
	defer func() {
		if v := recover(); v != nil {
			ps.p.log.Error("parked long-poll panicked", "route", ps.rec.route, "panic", v)
			_ = ps.conn.Close()
			status = 500
		}
		ps.rec.finishDetached(ps.req, status, n)
	}()
	resp := &bufferedResponse{header: ps.header.Clone()}
	write(resp, ps.req)
	keepAlive := !ps.p.isClosed()
	if err := resp.writeTo(ps.conn, keepAlive); err != nil {
		_ = ps.conn.Close()
		return
	}
	status, n = resp.status, resp.body.Len()
	if !keepAlive {
		_ = ps.conn.Close()
		return
	}
	c := handedBack(ps.conn, ps.prefix, ps.p.idleTimeout)
	if !ps.p.handBack(c) {
		_ = ps.conn.Close()
	}
}

// end takes the request off the parked list (the sweep keeps off it from
// now on).
func (ps *parkedSync) end() {
	ps.mu.Lock()
	ps.finished = true
	ps.mu.Unlock()
	ps.p.unpark(ps)
}

func (p *Parking) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *Parking) unpark(ps *parkedSync) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.parked, ps)
	if len(p.parked) == 0 {
		p.idle.Broadcast()
	}
}

func (p *Parking) handBack(c net.Conn) bool {
	p.mu.Lock()
	ln := p.ln
	if ln != nil && !p.closed {
		if p.fresh == nil {
			p.fresh = make(map[net.Conn]struct{})
		}
		p.fresh[c] = struct{}{}
	}
	p.mu.Unlock()
	if ln != nil && ln.handBack(c) {
		return true
	}
	p.mu.Lock()
	delete(p.fresh, c)
	p.mu.Unlock()
	return false
}

// ConnState is the API server's http.Server.ConnState: a handed-back
// connection stops being fresh once net/http starts reading a request from
// it (or closes it).
func (p *Parking) ConnState(c net.Conn, st http.ConnState) {
	if st == http.StateNew {
		return
	}
	p.mu.Lock()
	if len(p.fresh) > 0 {
		delete(p.fresh, c)
	}
	p.mu.Unlock()
}

// CloseFresh closes the connections handed back to net/http that have not
// begun a request since: idle keep-alive connections, which net/http,
// taking them for new ones (StateNew), would let hold its Shutdown for
// five seconds. Call it after Close and Drain, before http.Server.Shutdown.
func (p *Parking) CloseFresh() {
	p.mu.Lock()
	fresh := p.fresh
	p.fresh = nil
	p.mu.Unlock()
	for c := range fresh {
		_ = c.Close()
	}
}

// sweep cancels the parked polls whose client has gone.
func (p *Parking) sweep() {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		all := make([]*parkedSync, 0, len(p.parked))
		for ps := range p.parked {
			all = append(all, ps)
		}
		p.mu.Unlock()
		for _, ps := range all {
			ps.mu.Lock()
			wait := ps.wait
			gone := wait != nil && !ps.finished && sweepable(ps.conn) && peerClosed(socket(ps.conn))
			ps.mu.Unlock()
			if gone {
				wait.Cancel(errClientGone)
			}
		}
	}
}

// bufferedResponse is the http.ResponseWriter a parked poll answers into.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}

// writeTo writes the response to c as HTTP/1.1, as net/http would have.
func (b *bufferedResponse) writeTo(c net.Conn, keepAlive bool) error {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	h := b.header
	h.Set("Content-Length", strconv.Itoa(b.body.Len()))
	if h.Get("Date") == "" {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	if !keepAlive {
		h.Set("Connection", "close")
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "HTTP/1.1 %d %s\r\n", b.status, http.StatusText(b.status))
	if err := h.Write(&head); err != nil {
		return err
	}
	head.WriteString("\r\n")
	if err := c.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return err
	}
	// The head and the body in one write (writev), the body not copied.
	bufs := net.Buffers{head.Bytes(), b.body.Bytes()}
	if _, err := bufs.WriteTo(c); err != nil {
		return err
	}
	return c.SetDeadline(time.Time{})
}

// backConn is a connection handed back to net/http after a parked
// answer. It reads first the bytes the client pipelined behind the parked
// request (r, when not nil), then the socket. And until the next
// request's first byte arrives, it holds any read deadline net/http sets
// (the header timeout, from the moment it took the connection for a new
// one) back to idle from now, then applies it from that first byte: a
// client gets the server's idle timeout between a parked answer and its
// next request, as on any kept-alive connection, and a request that has
// begun still gets only the header timeout to finish its header.
type backConn struct {
	net.Conn // the socket, never a backConn
	r        io.Reader
	idle     time.Duration

	started atomic.Bool // a byte of the next request has been read
	mu      sync.Mutex
	header  time.Duration // the read timeout net/http asked for; 0: none
}

// handedBack wraps c, whose client may have pipelined prefix, to be
// handed back to net/http. A backConn is unwrapped, not nested, so a
// connection parked again and again keeps one layer; bytes its reader had
// not yet given out stay in front of the socket's.
func handedBack(c net.Conn, prefix []byte, idle time.Duration) net.Conn {
	rest := io.Reader(nil)
	if bc, ok := c.(*backConn); ok {
		c, rest = bc.Conn, bc.r
	}
	if len(prefix) > 0 {
		if rest == nil {
			rest = c
		}
		rest = io.MultiReader(bytes.NewReader(prefix), rest)
	}
	if rest == nil && idle <= 0 {
		return c
	}
	return &backConn{Conn: c, r: rest, idle: idle}
}

func (c *backConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.r != nil {
		n, err = c.r.Read(p)
	} else {
		n, err = c.Conn.Read(p)
	}
	if n > 0 && !c.started.Load() {
		c.mu.Lock()
		if !c.started.Load() {
			c.started.Store(true)
			if c.header > 0 {
				_ = c.Conn.SetReadDeadline(time.Now().Add(c.header))
			}
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *backConn) SetReadDeadline(t time.Time) error {
	if c.started.Load() {
		return c.Conn.SetReadDeadline(t)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started.Load() || c.idle <= 0 || t.IsZero() || !t.After(time.Now()) {
		// A request under way, no idle timeout to give, no deadline, or
		// one in the past (net/http aborting a read): as asked.
		if !c.started.Load() {
			c.header = 0
		}
		return c.Conn.SetReadDeadline(t)
	}
	c.header = time.Until(t)
	return c.Conn.SetReadDeadline(time.Now().Add(max(c.idle, c.header)))
}

func (c *backConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// CloseWrite half-closes the socket, as net/http does to a connection it
// closes after an error answer so the client reads the answer before the
// close.
func (c *backConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// socket is c's socket: c itself unless c is a backConn.
func socket(c net.Conn) net.Conn {
	if bc, ok := c.(*backConn); ok {
		return bc.Conn
	}
	return c
}

// sweepable reports whether the sweep may peek at c's socket: not while
// bytes the client pipelined wait in front of it, which a peek at the
// socket would not see (a client that sent a request and then closed its
// side still has that request to be answered).
func sweepable(c net.Conn) bool {
	bc, ok := c.(*backConn)
	return !ok || bc.r == nil
}

// parkingListener is the API listener plus the connections handed back.
type parkingListener struct {
	net.Listener
	back     chan net.Conn
	accepted chan accepted
	done     chan struct{}
	once     sync.Once
}

type accepted struct {
	c   net.Conn
	err error
}

// pump accepts from the real listener, so Accept can wait on it and on
// handed-back connections at once.
func (l *parkingListener) pump() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- accepted{c, err}:
		case <-l.done:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (l *parkingListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.back:
		return c, nil
	case a := <-l.accepted:
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *parkingListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// handBack gives c to the server's next Accept; false once the listener
// is closed.
func (l *parkingListener) handBack(c net.Conn) bool {
	select {
	case l.back <- c:
		return true
	case <-l.done:
		return false
	}
}
