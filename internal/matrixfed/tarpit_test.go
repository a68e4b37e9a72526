package matrixfed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// These tests hold the outbound side to DESIGN invariant 14 against peers
// that accept connections and then never answer (tarpits): every phase has
// a deadline, so once the deadlines have passed the goroutines and
// descriptors the requests took are all given back. The deadlines are set
// small for the test; the assertions wait for the counts to settle (polling
// with a generous bound), never for a time.

// tarpit is a loopback listener that accepts every connection and never
// writes a byte (what it sends first, if anything, is up to answer). It reads
// what it is sent and closes its end when the other end does, so that the
// descriptors it holds end with the client's.
type tarpit struct {
	ln     net.Listener
	answer []byte
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newTarpit(t *testing.T, answer []byte) *tarpit {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tp := &tarpit{ln: ln, answer: answer, conns: map[net.Conn]struct{}{}}
	tp.wg.Add(1)
	go func() {
		defer tp.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tp.mu.Lock()
			if tp.closed {
				tp.mu.Unlock()
				c.Close()
				return
			}
			tp.conns[c] = struct{}{}
			tp.mu.Unlock()
			tp.wg.Add(1)
			go func() {
				defer tp.wg.Done()
				if tp.answer != nil {
					_, _ = c.Write(tp.answer)
				}
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				c.Close()
				tp.mu.Lock()
				delete(tp.conns, c)
				tp.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(tp.close)
	return tp
}

func (tp *tarpit) port() uint16 { return uint16(tp.ln.Addr().(*net.TCPAddr).Port) }

// open is the number of connections the tarpit still holds.
func (tp *tarpit) open() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return len(tp.conns)
}

func (tp *tarpit) close() {
	tp.mu.Lock()
	tp.closed = true
	for c := range tp.conns {
		c.Close()
	}
	tp.mu.Unlock()
	tp.ln.Close()
	tp.wg.Wait()
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(entries)
}

// settle polls until goroutines and descriptors are back within slack of
// their baselines, and fails naming the counts if they never are.
func settle(t *testing.T, goroutines, fds int) {
	t.Helper()
	const slack = 5
	var g, f int
	for range 300 { // up to 30 s; the deadlines are well below a second
		runtime.GC()
		g, f = runtime.NumGoroutine(), openFDs(t)
		if g <= goroutines+slack && f <= fds+slack {
			t.Logf("settled: %d goroutines (baseline %d), %d descriptors (baseline %d)", g, goroutines, f, fds)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	t.Fatalf("not back at baseline: %d goroutines (baseline %d), %d descriptors (baseline %d)\n%s", g, goroutines, f, fds, buf[:n])
}

// tarpitDNS answers every SRV lookup of _matrix-fed._tcp with the tarpit.
type tarpitDNS struct{ port uint16 }

func (d tarpitDNS) LookupSRV(_ context.Context, service, _, name string) (string, []*net.SRV, error) {
	if service != "matrix-fed" {
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return name, []*net.SRV{{Target: "127.0.0.1.", Port: d.port, Priority: 10}}, nil
}

// tarpitClient is a federation client whose every phase has a deadline far
// below a second, and whose discovery leads every name to tp (SRV) and
// fetches every .well-known from tp as well.
func tarpitClient(t *testing.T, tp *tarpit, overrides map[string]string) *Client {
	key, err := GenerateSigningKey()
	require.NoError(t, err)
	dialer := &net.Dialer{Timeout: 200 * time.Millisecond}
	res, err := NewResolver(ResolverOptions{
		Overrides:        overrides,
		DNS:              tarpitDNS{port: tp.port()},
		WellKnownTimeout: 300 * time.Millisecond,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, tp.ln.Addr().String())
		},
	})
	require.NoError(t, err)
	c, err := NewClient(ClientOptions{
		ServerName: "us.test", Key: key, Resolver: res,
		DialTimeout:           200 * time.Millisecond,
		TLSHandshakeTimeout:   200 * time.Millisecond,
		ResponseHeaderTimeout: 200 * time.Millisecond,
		BodyTimeout:           200 * time.Millisecond,
		RequestTimeout:        time.Second,
	})
	require.NoError(t, err)
	return c
}

// TestKeyFetchesFromTarpitsEnd is observation 6 of issue 11: requests naming
// 384 distinct origins whose key servers accept and never answer (the TLS
// handshake of the key fetch and of the .well-known lookup never completes)
// used to leave 400 goroutines and descriptors stuck in handshakes.
func TestKeyFetchesFromTarpitsEnd(t *testing.T) {
	tp := newTarpit(t, nil)
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	client := tarpitClient(t, tp, nil)
	// The fetcher's own timeout is long (as in production): what ends the
	// fetches are the client's per-phase and per-request deadlines.
	f := NewKeyFetcher(client, KeyFetcherOptions{FetchTimeout: time.Minute})
	const origins = 384
	var wg sync.WaitGroup
	errs := make(chan error, origins)
	for i := range origins {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := f.PublicKey(ctx, fmt.Sprintf("origin%d.test", i), "ed25519:k", time.Time{})
			require.NoError(t, ctx.Err(), "every lookup ends by the fetcher's own deadlines")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	busy := 0
	for err := range errs {
		require.Error(t, err)
		if errors.Is(err, ErrKeyFetchBusy) {
			busy++
		}
	}
	// At most DefaultMaxConcurrentKeyFetches origins were fetched at once;
	// the others were refused without a fetch.
	require.GreaterOrEqual(t, busy, origins-DefaultMaxConcurrentKeyFetches)
	client.CloseIdleConnections()
	settle(t, baseG, baseFD)
	require.Zero(t, tp.open(), "every connection to the tarpit was closed by us")
}

// TestRequestsToTarpitPeersEnd: a destination that never completes the TLS
// handshake, one that takes the request and never answers, and one that
// sends headers and then never the body all fail within the client's
// deadlines, and leave nothing behind.
func TestRequestsToTarpitPeersEnd(t *testing.T) {
	silent := newTarpit(t, nil)
	headersOnly := newTarpit(t, []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"))
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	client := tarpitClient(t, silent, map[string]string{
		"plain.test":   "http://" + silent.ln.Addr().String(),
		"trickle.test": "http://" + headersOnly.ln.Addr().String(),
	})
	var wg sync.WaitGroup
	for i := range 50 {
		for _, dest := range []string{"tls.test", "plain.test", "trickle.test"} {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				var out map[string]any
				err := client.Do(ctx, dest, http.MethodPut, fmt.Sprintf("/_matrix/federation/v1/send/t%d", i), nil,
					[]byte(`{"edus":[],"pdus":[]}`), &out)
				require.Error(t, err, dest)
				require.NoError(t, ctx.Err(), "%s: the client's own deadlines end the request", dest)
			})
		}
	}
	wg.Wait()
	client.CloseIdleConnections()
	settle(t, baseG, baseFD)
	require.Zero(t, silent.open()+headersOnly.open())
}
