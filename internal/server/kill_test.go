package server_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/storage"
)

// buildTodeviced compiles the real binary, as cmd/todeviced's signal test
// does (same flags, so they share the build cache).
func buildTodeviced(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "todeviced")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/todeviced/todeviced/cmd/todeviced")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// process is todeviced running as a subprocess.
type process struct {
	cmd *exec.Cmd
	log *servertest.LockedBuffer
}

func startProcess(t *testing.T, bin string, args []string) *process {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TODEVICED_") {
			env = append(env, kv)
		}
	}
	p := &process{cmd: exec.Command(bin, args...), log: &servertest.LockedBuffer{}}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, p.log
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("todeviced log:\n%s", p.log.String())
		}
	})
	return p
}

func (p *process) kill(t *testing.T) {
	require.NoError(t, p.cmd.Process.Kill()) // SIGKILL: no shutdown, no lease release
	_ = p.cmd.Wait()
}

// waitServing waits until the API at addr answers.
func waitServing(t *testing.T, addr string) {
	waitUntil(t, "todeviced to serve on "+addr, func() bool {
		resp, err := http.Get("http://" + addr + "/_matrix/client/versions")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// sendRecorder stands between A and B: it records every transaction A
// sends, refuses the first with a 500, and forwards the others to B.
type sendRecorder struct {
	proxy *httputil.ReverseProxy

	mu       sync.Mutex
	attempts []string // "path body"
	refused  chan struct{}
}

func (s *sendRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.attempts = append(s.attempts, r.URL.Path+" "+string(body))
	first := len(s.attempts) == 1
	s.mu.Unlock()
	if first {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"not now"}`))
		close(s.refused)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.proxy.ServeHTTP(w, r)
}

func (s *sendRecorder) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.attempts...)
}

// TestFederationSenderSurvivesKill kills A (SIGKILL) right after its first
// attempt to send to B failed: the transaction A stored before that attempt
// is resent after the restart with the same id and the same bytes, and every
// message reaches B's device once, in order.
func TestFederationSenderSurvivesKill(t *testing.T) {
	t.Parallel()
	bin := buildTodeviced(t)
	eachBackend(t, func(t *testing.T, db func() string) { testSenderSurvivesKill(t, bin, db) })
}

func testSenderSurvivesKill(t *testing.T, bin string, db func() string) {
	addrA := freeAddr(t)
	dbA := db()

	lnB := listen(t, "127.0.0.1:0")
	cfgB := nodeConfig(t, "b.test", db())
	cfgB.FederationDestinations["a.test"] = "http://" + addrA
	b := start(t, cfgB, lnB)
	b1 := b.syncer(b.device(bob, "B1"))

	bURL, err := url.Parse(b.url)
	require.NoError(t, err)
	rec := &sendRecorder{proxy: httputil.NewSingleHostReverseProxy(bURL), refused: make(chan struct{})}
	proxyLn := listen(t, "127.0.0.1:0")
	proxy := &http.Server{Handler: rec}
	go func() { _ = proxy.Serve(proxyLn) }()
	t.Cleanup(func() { _ = proxy.Close() })

	args := []string{"serve", "--listen", addrA, "--metrics-listen", "", "--database-url", dbA,
		"--server-name", "a.test", "--signing-key", filepath.Join(t.TempDir(), "a.key"),
		"--internal-secret", secret, "--log-format", "json",
		"--federation-destinations", "b.test=http://" + proxyLn.Addr().String(),
		"--federation-lease-ttl", "1s", "--federation-backoff-min", "50ms", "--federation-backoff-max", "200ms"}
	a := startProcess(t, bin, args)
	waitServing(t, addrA)
	aNode := &node{t: t, name: "a.test", url: "http://" + addrA}
	status, body := aNode.do(http.MethodPut, "/_todeviced/internal/v1/users/"+url.PathEscape(alice)+"/devices/A1", secret,
		map[string]any{"access_token": "alice-token"})
	require.Equal(t, http.StatusOK, status, "%s", body)

	for i := range 3 {
		aNode.send("alice-token", fmt.Sprint("t", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
	}
	select {
	case <-rec.refused:
	case <-testCtx(t).Done():
		t.Fatal("A never tried to send")
	}
	a.kill(t)
	first := rec.snapshot()[0]

	a = startProcess(t, bin, args)
	waitServing(t, addrA)
	require.Equal(t, seq(0, 3), ns(b1.collect(3)), "every message arrives once, in order")

	attempts := rec.snapshot()
	require.GreaterOrEqual(t, len(attempts), 2)
	require.Equal(t, first, attempts[1], "the transaction retried after the restart is the same: id and EDU bytes")
	require.True(t, strings.HasPrefix(first, "/_matrix/federation/v1/send/tdv"), "ids are in todeviced's namespace: %.60s", first)

	// A finishes: nothing left queued or stored, and nothing more arrives.
	// (A second handle on A's database, as `todeviced migrate` would open.)
	st, err := storage.Open(testCtx(t), storage.Options{URL: dbA})
	require.NoError(t, err)
	defer st.Close()
	waitUntil(t, "A to finish sending", func() bool {
		bl, err := st.Inbox().OutboxBacklog(testCtx(t))
		require.NoError(t, err)
		txns, err := st.Federation().TxnDestinations(testCtx(t))
		require.NoError(t, err)
		return bl.Pending == 0 && len(txns) == 0
	})
	require.Empty(t, b1.once(0), "nothing arrives twice")
}
