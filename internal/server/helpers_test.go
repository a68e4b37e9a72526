package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

const secret = "internal-secret"

// testCtx bounds a test so a hang fails it instead of the run.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// listen opens addr, retrying while a just-closed listener's port is still
// being released.
func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ctx := testCtx(t)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			require.NoError(t, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("listening on %s: %v", addr, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// node is one todeviced served in-process on a loopback port.
type node struct {
	t      testing.TB
	name   string
	addr   string
	url    string
	cfg    server.Config
	opts   server.Options
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error
}

// eachBackend runs fn as a parallel subtest per database backend; db makes
// a fresh database of that backend.
func eachBackend(t *testing.T, fn func(t *testing.T, db func() string)) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		fn(t, func() string { return b.NewURL(t) })
	})
}

// nodeConfig is the configuration of a test node named name (a.test, …)
// with the database at dbURL and a key file of its own.
func nodeConfig(t testing.TB, name, dbURL string) server.Config {
	cfg := server.Defaults()
	cfg.DatabaseURL = dbURL
	cfg.ServerName = name
	cfg.SigningKey = filepath.Join(t.TempDir(), name+".key")
	cfg.InternalSecret = secret
	cfg.MetricsListen = ""
	cfg.FederationBackoffMin = 20 * time.Millisecond
	cfg.FederationBackoffMax = 200 * time.Millisecond
	cfg.FederationLeaseTTL = 2 * time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.FederationDestinations = map[string]string{}
	return cfg
}

// start serves cfg on ln until the node is stopped (at cleanup at the
// latest).
func start(t testing.TB, cfg server.Config, ln net.Listener) *node {
	return startWith(t, cfg, server.Options{}, ln)
}

// startWith is start with server options (test hooks).
func startWith(t testing.TB, cfg server.Config, opts server.Options, ln net.Listener) *node {
	t.Helper()
	n := &node{t: t, name: cfg.ServerName, addr: ln.Addr().String(), url: "http://" + ln.Addr().String(), cfg: cfg, opts: opts}
	n.run(ln)
	t.Cleanup(n.stop)
	return n
}

func (n *node) run(ln net.Listener) {
	n.t.Helper()
	srv, err := server.New(context.Background(), n.cfg, nil, n.opts)
	require.NoError(n.t, err)
	n.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- srv.ServeListeners(ctx, ln, nil) }()
}

// stop shuts the node down (idempotent).
func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	require.NoError(n.t, <-n.done)
	n.cancel = nil
}

// restart starts the node again on the same address, database and key.
func (n *node) restart() {
	n.stop()
	n.run(listen(n.t, n.addr))
}

// pair starts two nodes that federate with each other, each on a database
// db makes.
func pair(t testing.TB, db func() string, tweak func(*server.Config)) (a, b *node) {
	lnA, lnB := listen(t, "127.0.0.1:0"), listen(t, "127.0.0.1:0")
	cfgA, cfgB := nodeConfig(t, "a.test", db()), nodeConfig(t, "b.test", db())
	cfgA.FederationDestinations["b.test"] = "http://" + lnB.Addr().String()
	cfgB.FederationDestinations["a.test"] = "http://" + lnA.Addr().String()
	if tweak != nil {
		tweak(&cfgA)
		tweak(&cfgB)
	}
	return start(t, cfgA, lnA), start(t, cfgB, lnB)
}

// device creates a device and returns its access token.
func (n *node) device(user, device string) string {
	n.t.Helper()
	token := fmt.Sprintf("tok-%s-%s", user, device)
	_, _, err := n.srv.Devices().PutDevice(testCtx(n.t), user, device, token, nil, nil)
	require.NoError(n.t, err)
	return token
}

func (n *node) do(method, path, token string, body any) (int, []byte) {
	n.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(n.t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(testCtx(n.t), method, n.url+path, r)
	require.NoError(n.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(n.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(n.t, err)
	return resp.StatusCode, data
}

// send is a sendToDevice of the test type.
func (n *node) send(token, txnID string, messages map[string]map[string]any) {
	n.t.Helper()
	status, body := n.do(http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/"+url.PathEscape(txnID), token,
		map[string]any{"messages": messages})
	require.Equal(n.t, http.StatusOK, status, "sendToDevice: %s", body)
}

type event struct {
	Sender  string `json:"sender"`
	Type    string `json:"type"`
	Content struct {
		N int `json:"n"`
	} `json:"content"`
}

// syncer reads one device's to-device events.
type syncer struct {
	n     *node
	token string
	since string
}

func (n *node) syncer(token string) *syncer { return &syncer{n: n, token: token} }

// once syncs once with the given long-poll timeout.
func (s *syncer) once(timeout time.Duration) []event {
	s.n.t.Helper()
	q := url.Values{"timeout": {fmt.Sprint(timeout.Milliseconds())}}
	if s.since != "" {
		q.Set("since", s.since)
	}
	status, body := s.n.do(http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), s.token, nil)
	require.Equal(s.n.t, http.StatusOK, status, "sync: %s", body)
	var r struct {
		NextBatch string `json:"next_batch"`
		ToDevice  struct {
			Events []event `json:"events"`
		} `json:"to_device"`
	}
	require.NoError(s.n.t, json.Unmarshal(body, &r))
	s.since = r.NextBatch
	return r.ToDevice.Events
}

// collect syncs until want events arrived.
func (s *syncer) collect(want int) []event {
	s.n.t.Helper()
	ctx := testCtx(s.n.t)
	var got []event
	for len(got) < want {
		if ctx.Err() != nil {
			s.n.t.Fatalf("got %d of %d events: %+v", len(got), want, got)
		}
		got = append(got, s.once(5*time.Second)...)
	}
	return got
}

func ns(evs []event) []int {
	out := make([]int, len(evs))
	for i, e := range evs {
		out[i] = e.Content.N
	}
	return out
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// idle waits until the node has nothing left to send: an empty outbox and
// no stored transaction. A transaction is finished only after its
// destination answered 200, which it does after committing.
func (n *node) idle() {
	n.t.Helper()
	waitUntil(n.t, n.name+" to finish sending", func() bool {
		b, err := n.srv.Backend().Inbox().OutboxBacklog(testCtx(n.t))
		require.NoError(n.t, err)
		txns, err := n.srv.Backend().Federation().TxnDestinations(testCtx(n.t))
		require.NoError(n.t, err)
		return b.Pending == 0 && len(txns) == 0
	})
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx := testCtx(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// metric reads a counter or gauge from a registry; labels as "k=v".
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range labels {
				k, v, _ := strings.Cut(l, "=")
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == k && lp.GetValue() == v {
			return true
		}
	}
	return false
}

func (n *node) metric(name string, labels ...string) float64 {
	return metric(n.t, n.srv.Registry(), name, labels...)
}

// metricReaches waits until a counter is at least want and returns it. The
// sender counts what it sent just after the commit that idle() and
// idleLists() watch for, so read at once the counter can lag that one step.
func (n *node) metricReaches(name, labels string, want float64) float64 {
	n.t.Helper()
	waitUntil(n.t, name+" to count what was sent", func() bool { return n.metric(name, labels) >= want })
	return n.metric(name, labels)
}
