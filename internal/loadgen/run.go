package loadgen

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Timing of requests and retries.
const (
	// sendAttemptTimeout bounds one sendToDevice attempt, so a server that
	// hangs shows up as timeouts (and retries) instead of a stuck sender.
	sendAttemptTimeout = 30 * time.Second
	// syncGrace is added to the long-poll timeout for a sync request's own
	// deadline.
	syncGrace      = 30 * time.Second
	minBackoff     = 50 * time.Millisecond
	maxBackoff     = 2 * time.Second
	provisionFor   = 2 * time.Minute
	provisionConns = 32
	// finalAckFor bounds the last acknowledging syncs after the drain.
	finalAckFor = 30 * time.Second
	// catchUpLimit: a paced sender more than this behind its schedule
	// restarts the schedule instead of bursting to catch up.
	catchUpLimit = time.Second
)

// device is one provisioned device.
type device struct {
	userID   string
	deviceID string
	token    string
	authz    string // "Bearer " + token, built once
}

// Runner runs one load. Make it with New, call Run once; Stop may be called
// from another goroutine to end the sending phase early.
type Runner struct {
	cfg     Config
	log     *slog.Logger
	c       *client
	runID   string
	devices []device
	logs    []*SendLog
	inboxes []*Inbox
	pad     string
	st      stats

	stopOnce sync.Once
	stopCh   chan struct{}
}

// stats are the live counters, shared by senders, syncers and the reporter.
type stats struct {
	start        time.Time
	phase        atomic.Value // string
	sendsOK      atomic.Int64 // confirmed sends
	sendAttempts atomic.Int64
	sendErrors   atomic.Int64
	syncRequests atomic.Int64
	syncErrors   atomic.Int64
	expected     atomic.Int64 // messages of confirmed sends
	delivered    atomic.Int64 // distinct messages processed
	deliveries   atomic.Int64 // processed deliveries, repeats included
	dropped      atomic.Int64 // responses thrown away by --sync-drop-rate
	lastDelivery atomic.Int64 // Unix ns of the last first delivery
	inFlight     atomic.Int64 // sends not yet confirmed
	latency      Histogram    // send → first receipt
	sendLatency  Histogram    // successful sendToDevice round trip
	errs         errorCounts
}

// errorCounts counts errors by "operation: kind". Errors are rare next to
// requests, so a locked map is cheap enough.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]int64
}

func (e *errorCounts) add(op string, err error) {
	k := op + ": " + ErrorKind(err)
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int64{}
	}
	e.m[k]++
	e.mu.Unlock()
}

func (e *errorCounts) snapshot() map[string]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int64, len(e.m))
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// New checks cfg and prepares a run.
func New(cfg Config) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = 5 * time.Second
	}
	rt := cfg.Transport
	if rt == nil {
		rt = NewTransport(cfg.Devices()+cfg.Senders+provisionConns, cfg.H2C)
	}
	var b [4]byte
	if _, err := crand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("making a run id: %w", err)
	}
	r := &Runner{
		cfg:    cfg,
		log:    cfg.Logger,
		c:      &client{http: &http.Client{Transport: rt}, base: strings.TrimRight(cfg.URL, "/"), secret: cfg.InternalSecret},
		runID:  hex.EncodeToString(b[:]),
		pad:    padding(cfg.MessageBytes),
		stopCh: make(chan struct{}),
	}
	r.st.phase.Store("starting")
	return r, nil
}

// RunID is the run's unique id, the prefix of its user ids.
func (r *Runner) RunID() string { return r.runID }

// Stop ends the sending phase now; the run then drains and verifies.
func (r *Runner) Stop() { r.stopOnce.Do(func() { close(r.stopCh) }) }

func (r *Runner) userID(u int) string {
	return "@load-" + r.runID + "-u" + strconv.Itoa(u) + ":" + r.cfg.ServerName
}

// deviceName renders a device index for reports.
func (r *Runner) deviceName(d uint32) string {
	if int(d) < len(r.devices) {
		return r.devices[d].userID + "/" + r.devices[d].deviceID
	}
	return fmt.Sprintf("device %d", d)
}

// senderDevice is the device a sender sends as: senders take the
// provisioned devices in turn, as real clients send from their own devices.
func (r *Runner) senderDevice(s int) int { return s % len(r.devices) }

// Run provisions, loads, drains, verifies, measures the baseline and cleans
// up. It returns the report even when verification fails (Report.Verdict.OK
// says so); an error means the run could not be carried out.
func (r *Runner) Run(ctx context.Context) (*Report, error) {
	cfg := r.cfg
	if err := r.provision(ctx); err != nil {
		return nil, fmt.Errorf("provisioning devices: %w", err)
	}
	if !cfg.KeepDevices {
		defer func() {
			if ctx.Err() != nil {
				// An abort means "stop now", not "tidy up for minutes".
				r.log.Warn("aborted: leaving the run's devices in place", "run", r.runID, "devices", len(r.devices))
				return
			}
			r.cleanup(ctx)
		}()
	}
	r.log.Info("provisioned devices", "run", r.runID, "devices", len(r.devices), "users", cfg.Users)

	r.logs = make([]*SendLog, cfg.Senders)
	for i := range r.logs {
		r.logs[i] = NewSendLog(cfg.Fanout)
	}
	r.inboxes = make([]*Inbox, len(r.devices))
	for i := range r.inboxes {
		r.inboxes[i] = NewInbox()
	}

	// syncCtx ends the long-polls once everything arrived; finishing syncs
	// (the last acknowledgements) run after it under their own deadline.
	syncCtx, stopSync := context.WithCancel(ctx)
	defer stopSync()
	var syncers sync.WaitGroup
	startSyncers := func() error {
		var ready sync.WaitGroup
		for d := range r.devices {
			syncers.Add(1)
			ready.Add(1)
			go func() {
				defer syncers.Done()
				r.syncer(syncCtx, ctx, d, ready.Done)
			}()
		}
		// The clock starts once every syncer holds its connection: with
		// thousands of devices, the connect storm would otherwise eat the
		// first seconds of the measurement.
		ready.Wait()
		if ctx.Err() != nil {
			return fmt.Errorf("starting syncers: %w", ctx.Err())
		}
		r.log.Info("syncers ready", "syncers", len(r.devices))
		return nil
	}
	if !cfg.DeliverAfterSend {
		if err := startSyncers(); err != nil {
			return nil, err
		}
	}

	r.st.start = time.Now()
	r.st.phase.Store("sending")
	progressCtx, stopProgress := context.WithCancel(ctx)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		r.progress(progressCtx)
	}()

	// issueCtx ends the sending phase; hardCtx bounds retries and the
	// drain, and is cancelled DrainTimeout after sending stopped.
	issueCtx, stopIssue := context.WithCancel(ctx)
	defer stopIssue()
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		issueCtx, cancel = context.WithTimeout(issueCtx, cfg.Duration)
		defer cancel()
	}
	go func() {
		select {
		case <-r.stopCh:
			stopIssue()
		case <-issueCtx.Done():
		}
	}()
	hardCtx, stopHard := context.WithCancel(ctx)
	defer stopHard()

	var claimed atomic.Int64
	claim := func() bool { return cfg.Messages == 0 || claimed.Add(1) <= cfg.Messages }
	var senders sync.WaitGroup
	for s := range cfg.Senders {
		senders.Add(1)
		go func() {
			defer senders.Done()
			r.sender(issueCtx, hardCtx, s, claim)
		}()
	}
	sendersDone := make(chan struct{})
	go func() {
		senders.Wait()
		close(sendersDone)
	}()

	select {
	case <-issueCtx.Done():
	case <-sendersDone:
	}
	issueEnd := time.Now()
	stopIssue()
	if cfg.DeliverAfterSend {
		if err := startSyncers(); err != nil {
			stopProgress()
			<-progressDone
			return nil, err
		}
	}
	r.st.phase.Store("draining")
	drainTimer := time.AfterFunc(cfg.DrainTimeout, stopHard)
	defer drainTimer.Stop()
	<-sendersDone

	drained := r.waitDrained(hardCtx)
	stopSync()
	r.st.phase.Store("acknowledging")
	syncers.Wait()
	stopProgress()
	<-progressDone
	if ctx.Err() != nil {
		return nil, fmt.Errorf("running load: %w", ctx.Err())
	}

	rep := r.report(issueEnd, drained)
	if cfg.Baseline {
		r.log.Info("measuring the database baseline", "sends", rep.Sends)
		b, err := r.baseline(ctx, rep.Sends, issueEnd.Sub(r.st.start))
		if err != nil {
			return rep, fmt.Errorf("measuring the baseline: %w", err)
		}
		if b.SendsPerSec > 0 {
			b.Ratio = rep.SendsPerSec / b.SendsPerSec
		}
		rep.Baseline = b
	}
	return rep, nil
}

// waitDrained waits until every message of a confirmed send was delivered,
// or ctx ends. It polls: the check is two atomic loads, and how fast the
// drain notices is no part of any measurement.
func (r *Runner) waitDrained(ctx context.Context) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if r.st.delivered.Load() >= r.st.expected.Load() {
			return true
		}
		select {
		case <-ctx.Done():
			return r.st.delivered.Load() >= r.st.expected.Load()
		case <-t.C:
		}
	}
}

// provision creates the devices through the internal API, provisionConns
// at a time, retrying what can be retried (the server may be restarting).
func (r *Runner) provision(ctx context.Context) error {
	var secret [16]byte
	if _, err := crand.Read(secret[:]); err != nil {
		return err
	}
	tokenBase := "tdvload_" + r.runID + "_" + hex.EncodeToString(secret[:]) + "_"
	cfg := r.cfg
	r.devices = make([]device, 0, cfg.Devices())
	for u := range cfg.Users {
		for d := range cfg.DevicesPerUser {
			tok := tokenBase + strconv.Itoa(len(r.devices))
			r.devices = append(r.devices, device{
				userID: r.userID(u), deviceID: "LD" + strconv.Itoa(d), token: tok, authz: "Bearer " + tok,
			})
		}
	}
	ctx, cancel := context.WithTimeout(ctx, provisionFor)
	defer cancel()
	return r.forEachDevice(ctx, func(ctx context.Context, d device) error {
		return retry(ctx, func(ctx context.Context) error { return r.c.putDevice(ctx, d.userID, d.deviceID, d.token) })
	})
}

// cleanup deletes the run's devices; the server purges their inboxes.
func (r *Runner) cleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, provisionFor)
	defer cancel()
	err := r.forEachDevice(ctx, func(ctx context.Context, d device) error {
		return retry(ctx, func(ctx context.Context) error { return r.c.deleteDevice(ctx, d.userID, d.deviceID) })
	})
	if err != nil {
		r.log.Warn("deleting the run's devices", "run", r.runID, "err", err)
		return
	}
	r.log.Info("deleted the run's devices", "run", r.runID, "devices", len(r.devices))
}

func (r *Runner) forEachDevice(ctx context.Context, fn func(context.Context, device) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan device)
	var wg sync.WaitGroup
	for range min(provisionConns, len(r.devices)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				if err := fn(ctx, d); err != nil {
					cancel(fmt.Errorf("%s/%s: %w", d.userID, d.deviceID, err))
				}
			}
		}()
	}
	for _, d := range r.devices {
		select {
		case work <- d:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(work)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// retry calls fn until it succeeds, fails for good, or ctx ends.
func retry(ctx context.Context, fn func(context.Context) error) error {
	b := minBackoff
	for {
		err := fn(ctx)
		if err == nil || !retryable(err) {
			return err
		}
		if !sleep(ctx, b) {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		b = min(2*b, maxBackoff)
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// jitter spreads retries of many clients over [d/2, d).
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

// sender makes sends one at a time, each to Fanout distinct devices chosen
// at random, until issueCtx ends or claim refuses. A send is retried with
// the same txnId and body until it is confirmed, the error is permanent, or
// hardCtx ends.
func (r *Runner) sender(issueCtx, hardCtx context.Context, s int, claim func() bool) {
	cfg := r.cfg
	log := r.logs[s]
	from := r.devices[r.senderDevice(s)]
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(s)))
	perm := make([]uint32, len(r.devices))
	for i := range perm {
		perm[i] = uint32(i)
	}
	recipients := make([]uint32, cfg.Fanout)
	var resp bytes.Buffer
	txnPrefix := r.runID + "." + strconv.Itoa(s) + "."
	bodyCap := 0

	var interval time.Duration
	var next time.Time
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Senders) / cfg.Rate)
		// Stagger the senders over one interval.
		next = time.Now().Add(interval * time.Duration(s) / time.Duration(cfg.Senders))
	}
	for issueCtx.Err() == nil {
		if interval > 0 {
			now := time.Now()
			if now.Sub(next) > catchUpLimit {
				next = now
			}
			if wait := next.Sub(now); wait > 0 && !sleep(issueCtx, wait) {
				return
			}
			next = next.Add(interval)
		}
		if !claim() {
			return
		}
		// A partial Fisher-Yates shuffle picks Fanout distinct devices; perm
		// stays a permutation, so the next send can shuffle it again.
		for k := range cfg.Fanout {
			j := k + rng.IntN(len(perm)-k)
			perm[k], perm[j] = perm[j], perm[k]
		}
		copy(recipients, perm[:cfg.Fanout])
		// Sorted, a user's devices are adjacent (device index = user ×
		// DevicesPerUser + device), which the body's nesting needs.
		slices.Sort(recipients)
		seq := log.Add(recipients)
		// A fresh body per send (not per attempt): the transport may still
		// read a failed attempt's body after Do returned, so the buffer must
		// not be reused for the next send.
		body := r.appendBody(make([]byte, 0, bodyCap), s, seq, recipients, time.Now().UnixNano())
		bodyCap = len(body)
		url := r.c.sendURL(txnPrefix + strconv.FormatUint(uint64(seq), 10))
		r.st.inFlight.Add(1)
		ok := r.sendUntilConfirmed(hardCtx, from.authz, url, body, &resp)
		r.st.inFlight.Add(-1)
		if !ok {
			return
		}
		log.Confirm(seq)
		r.st.sendsOK.Add(1)
		r.st.expected.Add(int64(cfg.Fanout))
	}
}

func (r *Runner) sendUntilConfirmed(ctx context.Context, authz, url string, body []byte, resp *bytes.Buffer) bool {
	b := minBackoff
	for {
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, sendAttemptTimeout)
		err := r.c.send(actx, authz, url, body, resp)
		cancel()
		r.st.sendAttempts.Add(1)
		if err == nil {
			r.st.sendLatency.Record(time.Since(start))
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		r.st.sendErrors.Add(1)
		r.st.errs.add("send", err)
		if !retryable(err) {
			r.log.Error("send failed for good", "err", err)
			return false
		}
		wait := jitter(b)
		var he *HTTPError
		if errors.As(err, &he) && he.RetryAfter > 0 {
			wait = he.RetryAfter
		}
		if !sleep(ctx, wait) {
			return false
		}
		b = min(2*b, maxBackoff)
	}
}

// appendBody appends the sendToDevice body of one send:
// {"messages":{USER:{DEVICE:CONTENT,…},…}} with recipients sorted.
func (r *Runner) appendBody(b []byte, sender int, seq uint32, recipients []uint32, sentNS int64) []byte {
	b = append(b, `{"messages":{`...)
	lastUser := ""
	for i, d := range recipients {
		dev := &r.devices[d]
		if dev.userID != lastUser {
			if i > 0 {
				b = append(b, "},"...)
			}
			b = appendJSONString(b, dev.userID)
			b = append(b, ":{"...)
			lastUser = dev.userID
		} else {
			b = append(b, ',')
		}
		b = appendJSONString(b, dev.deviceID)
		b = append(b, ':')
		b = appendContent(b, r.runID, MsgID{Sender: uint32(sender), Seq: seq, Device: d}, sentNS, r.cfg.MessageBytes, r.pad)
	}
	return append(b, "}}}"...)
}

// syncer long-polls one device's /sync until syncCtx ends, processing and
// acknowledging what arrives; then it acknowledges the last batch and reads
// until the inbox is empty, so nothing is left behind and a message handed
// out again after its acknowledgement would still be caught.
//
// Its first request does not wait (timeout 0), so it answers at once and
// the syncer calls ready: from then on its connection is established.
func (r *Runner) syncer(syncCtx, ctx context.Context, d int, ready func()) {
	dev := &r.devices[d]
	in := r.inboxes[d]
	var buf bytes.Buffer
	var resp syncResponse
	since := ""
	rng := rand.New(rand.NewPCG(r.cfg.Seed^0x5eed, uint64(d)))
	b := minBackoff
	first := true
	defer func() {
		if first {
			ready()
		}
	}()
	for syncCtx.Err() == nil {
		timeout := r.cfg.SyncTimeout
		if first {
			timeout = 0
		}
		rctx, cancel := context.WithTimeout(syncCtx, timeout+syncGrace)
		err := r.c.sync(rctx, dev.authz, since, timeout, &buf, &resp)
		cancel()
		r.st.syncRequests.Add(1)
		if err != nil {
			if syncCtx.Err() != nil {
				break
			}
			r.st.syncErrors.Add(1)
			r.st.errs.add("sync", err)
			if !sleep(syncCtx, jitter(b)) {
				break
			}
			b = min(2*b, maxBackoff)
			continue
		}
		b = minBackoff
		if first {
			first = false
			ready()
		}
		if r.cfg.SyncDropRate > 0 && len(resp.ToDevice.Events) > 0 && rng.Float64() < r.cfg.SyncDropRate {
			// Throw the response away as if it had been lost on the way:
			// since stays, so the server must hand these out again.
			r.st.dropped.Add(1)
			r.unprocessed(d, in, &resp)
			continue
		}
		r.process(d, in, &resp)
		since = resp.NextBatch
	}

	fctx, cancel := context.WithTimeout(ctx, finalAckFor)
	defer cancel()
	b = minBackoff
	for {
		err := r.c.sync(fctx, dev.authz, since, 0, &buf, &resp)
		r.st.syncRequests.Add(1)
		if err != nil {
			r.st.syncErrors.Add(1)
			r.st.errs.add("final sync", err)
			if !sleep(fctx, jitter(b)) {
				return
			}
			b = min(2*b, maxBackoff)
			continue
		}
		r.process(d, in, &resp)
		since = resp.NextBatch
		if len(resp.ToDevice.Events) == 0 {
			return
		}
	}
}

// decode parses one event into a message of this run for device d, or
// says why it is not one.
func (r *Runner) decode(d int, ev *syncEvent, c *Content) string {
	if ev.Type != EventType {
		return "event type " + strconv.Quote(ev.Type)
	}
	*c = Content{}
	if err := json.Unmarshal(ev.Content, c); err != nil {
		return "content: " + err.Error()
	}
	if c.Run != r.runID {
		return "message of run " + strconv.Quote(c.Run)
	}
	if int(c.Sender) >= r.cfg.Senders {
		return "unknown sender index " + strconv.FormatUint(uint64(c.Sender), 10)
	}
	if int(c.Device) != d {
		return MsgID{c.Sender, c.Seq, c.Device}.String() + " arrived at device " + strconv.Itoa(d)
	}
	if want := r.devices[r.senderDevice(int(c.Sender))].userID; ev.Sender != want {
		return MsgID{c.Sender, c.Seq, c.Device}.String() + " has sender " + ev.Sender + ", want " + want
	}
	return ""
}

func (r *Runner) process(d int, in *Inbox, resp *syncResponse) {
	now := time.Now()
	var c Content
	for i := range resp.ToDevice.Events {
		if why := r.decode(d, &resp.ToDevice.Events[i], &c); why != "" {
			in.Corrupt(why)
			continue
		}
		r.st.deliveries.Add(1)
		if in.Deliver(c.Sender, c.Seq) {
			r.st.delivered.Add(1)
			r.st.latency.Record(now.Sub(time.Unix(0, c.SentNS)))
			r.st.lastDelivery.Store(now.UnixNano())
		}
	}
}

func (r *Runner) unprocessed(d int, in *Inbox, resp *syncResponse) {
	var c Content
	for i := range resp.ToDevice.Events {
		if r.decode(d, &resp.ToDevice.Events[i], &c) == "" {
			in.Unprocessed(c.Sender, c.Seq)
		}
	}
}
