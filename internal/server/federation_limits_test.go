package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/server"
)

const maxContentDepth = matrix.MaxContentDepth

// The memory tests measure this process's heap, so they do not run in
// parallel with other tests (top-level parallel tests wait for them).

const mib = 1 << 20

// heapPeak samples HeapInuse until stop is called and returns the highest
// value seen above the baseline taken when it started.
func heapPeak(t *testing.T) (stop func() uint64) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	done, result := make(chan struct{}), make(chan uint64)
	go func() {
		peak := base
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				result <- peak - base
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		grown := <-result
		t.Logf("heap in use grew by at most %.1f MiB", float64(grown)/mib)
		return grown
	}
}

// bigTxnBody is a JSON body of exactly n bytes.
func bigTxnBody(n int) []byte {
	b := make([]byte, 0, n)
	b = append(b, `{"edus":[],"pdus":[],"pad":"`...)
	b = append(b, bytes.Repeat([]byte("x"), n-len(b)-2)...)
	return append(b, `"}`...)
}

// xMatrix is a well-formed X-Matrix header whose signature is not valid.
func xMatrix(origin, destination, keyID string) string {
	return matrixfed.XMatrixAuth{Origin: origin, Destination: destination, KeyID: keyID,
		Signature: matrixfed.EncodeBase64(make([]byte, 64))}.String()
}

// silentListener accepts connections and never answers.
func silentListener(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestFederationUnauthenticatedBodiesNeverBuffered is observation 5 of issue
// 11: 20 concurrent 16 MiB PUT /send naming an origin whose key server never
// answers took 2 GB. The header and the origin's key are checked before the
// body is read, so none of the 320 MiB is ever buffered: the heap grows by
// less than one body (16 MiB).
func TestFederationUnauthenticatedBodiesNeverBuffered(t *testing.T) {
	cfg := nodeConfig(t, "b.test", "sqlite:"+filepath.Join(t.TempDir(), "b.db"))
	cfg.FederationDestinations["tarpit.test"] = "http://" + silentListener(t)
	cfg.FederationRequestTimeout = 300 * time.Millisecond
	b := start(t, cfg, listen(t, "127.0.0.1:0"))

	const n = 20
	body := bigTxnBody(federation.MaxTxnBytes)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: n}}
	defer client.CloseIdleConnections()
	stop := heapPeak(t)
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for i := range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(testCtx(t), http.MethodPut,
				b.url+"/_matrix/federation/v1/send/big"+strconv.Itoa(i), bytes.NewReader(body))
			require.NoError(t, err)
			req.Header.Set("Authorization", xMatrix("tarpit.test", "b.test", "ed25519:k"))
			resp, err := client.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	wg.Wait()
	grown := stop()
	close(statuses)
	for s := range statuses {
		require.Equal(t, http.StatusUnauthorized, s, "the origin's key cannot be had")
	}
	require.Less(t, grown, uint64(16*mib), "no body was buffered")
}

// TestFederationInflightBodiesBounded: bodies whose origin's key is known
// are read, but only --federation-inflight-bytes of them at once; the rest
// are refused at once with 429 M_LIMIT_EXCEEDED (never queued), and the heap
// stays within three times the budget: the bodies, their canonical copies and,
// as here, where the top-level keys arrive out of order, the scratch buffer
// that sorts them.
func TestFederationInflightBodiesBounded(t *testing.T) {
	dir := t.TempDir()
	n := 0
	a, b := pair(t, func() string { n++; return "sqlite:" + filepath.Join(dir, strconv.Itoa(n)+".db") }, func(c *server.Config) {
		c.FederationInflightBytes = 32 * mib
	})
	const requests = 12
	body := bigTxnBody(federation.MaxTxnBytes)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: requests}}
	defer client.CloseIdleConnections()
	keyID := loadKey(t, a).ServerKeyID
	// Warm b's key cache for a, so that every request gets to its body.
	status, _ := rawSend(t, b, "warm", []byte(`{}`), func(r *http.Request, _ []byte) {
		r.Header.Set("Authorization", xMatrix(a.name, b.name, keyID))
	})
	require.Equal(t, http.StatusUnauthorized, status)

	stop := heapPeak(t)
	release := make(chan struct{})
	type answer struct {
		status     int
		errcode    string
		retryAfter string
	}
	answers := make(chan answer, requests)
	var wg sync.WaitGroup
	for i := range requests {
		pr, pw := io.Pipe()
		wg.Go(func() {
			// All but the last byte, then wait: a body in flight.
			if _, err := pw.Write(body[:len(body)-1]); err != nil {
				return
			}
			<-release
			_, _ = pw.Write(body[len(body)-1:])
			pw.Close()
		})
		wg.Go(func() {
			req, err := http.NewRequestWithContext(testCtx(t), http.MethodPut,
				b.url+"/_matrix/federation/v1/send/inflight"+strconv.Itoa(i), pr)
			require.NoError(t, err)
			req.ContentLength = int64(len(body))
			req.Header.Set("Authorization", xMatrix(a.name, b.name, keyID))
			resp, err := client.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			var e struct {
				Errcode string `json:"errcode"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&e)
			answers <- answer{resp.StatusCode, e.Errcode, resp.Header.Get("Retry-After")}
		})
	}
	// Two bodies fit the budget and wait for their last byte; every other
	// request is answered meanwhile.
	for range requests - 2 {
		got := <-answers
		require.Equal(t, answer{http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "1"}, got)
	}
	close(release)
	for range 2 {
		got := <-answers
		require.Equal(t, http.StatusUnauthorized, got.status, "read, then refused for its signature")
	}
	wg.Wait()
	grown := stop()
	require.Less(t, grown, uint64(3*32*mib+16*mib), "two bodies and their copies for verifying, not twelve")
}

// TestFederationReceiverDropsWhatItCannotStore is observation 3 of issue 11
// from the receiving side: EDUs no store could hold (NUL or other control
// characters, over-long identifiers) or no /sync could carry (content nested
// too deeply) used to make PostgreSQL answer 500 to every retry of their
// transaction. They are dropped and counted, the transaction is answered
// 200, and the valid EDUs beside them are delivered.
func TestFederationReceiverDropsWhatItCannotStore(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		b1 := b.syncer(b.device(bob, "B1"))
		c := signedClient(t, a.name, loadKey(t, a), b)
		deep := map[string]any{"n": 99}
		for range maxContentDepth + 5 {
			deep = map[string]any{"d": deep}
		}
		withContent := func(id string, f func(content map[string]any)) map[string]any {
			e := toDeviceEDU(alice, id, bob, "B1", 99)
			f(e["content"].(map[string]any))
			return e
		}
		long := strings.Repeat("x", 256)
		edus := []map[string]any{
			toDeviceEDU(alice, "ok1", bob, "B1", 1),
			toDeviceEDU(alice, "nul-device", bob, "B1\x00", 99),
			toDeviceEDU(alice, "ctl-device", bob, "B1\x07", 99),
			toDeviceEDU(alice, "long-device", bob, long, 99),
			toDeviceEDU("@ali\x00ce:a.test", "nul-sender", bob, "B1", 99),
			withContent("nul-type", func(c map[string]any) { c["type"] = "m.t\x00" }),
			withContent("long-type", func(c map[string]any) { c["type"] = long }),
			withContent("nul-id\x00", func(map[string]any) {}),
			withContent(long, func(map[string]any) {}),
			withContent("deep", func(c map[string]any) {
				c["messages"] = map[string]any{bob: map[string]any{"B1": deep}}
			}),
			toDeviceEDU(alice, "ok2", bob, "B1", 2),
		}
		var resp json.RawMessage
		require.NoError(t, c.Do(testCtx(t), b.name, http.MethodPut, "/_matrix/federation/v1/send/poison1", nil,
			txnBody(a.name, nil, edus...), &resp), "the transaction is answered 200")
		require.Equal(t, []int{1, 2}, ns(b1.collect(2)), "the valid EDUs are delivered, in order")
		require.Equal(t, 8.0, b.metric("todeviced_federation_edus_dropped_total", "reason=invalid_id"))
		require.Equal(t, 1.0, b.metric("todeviced_federation_edus_dropped_total", "reason=too_deep"))

		// A transaction id no store could hold is refused at the door.
		err := c.Do(testCtx(t), b.name, http.MethodPut, "/_matrix/federation/v1/send/"+url.PathEscape("t\x00"), nil,
			txnBody(a.name, nil), nil)
		var he *matrixfed.HTTPError
		require.ErrorAs(t, err, &he)
		require.Equal(t, http.StatusBadRequest, he.Status)
	})
}

// poisonProxy stands in front of target and answers 500 to every
// transaction carrying marker, as a receiver does that fails on one EDU (the
// PostgreSQL receiver that could not store a NUL did, before issue 11); it
// passes everything else on. It counts the transactions it refused.
func poisonProxy(t *testing.T, target, marker string) (string, *atomic.Int64) {
	u, err := url.Parse(target)
	require.NoError(t, err)
	rp := httputil.NewSingleHostReverseProxy(u)
	var refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		if strings.Contains(string(body), marker) {
			refused.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"Internal server error."}`))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &refused
}

// TestFederationPoisonEDUDelaysOnlyItself is observation 3 of issue 11 from
// the sending side (DESIGN invariant 13): a destination that answers 500 to
// every transaction carrying one EDU used to hold every later message to it
// behind that transaction until the 7-day TTL. The sender splits the
// transaction, sets the EDU aside, delivers the message after it, and drops
// the poison EDU once it fails alone again while the destination takes
// others.
func TestFederationPoisonEDUDelaysOnlyItself(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		var refused *atomic.Int64
		a, b := pair(t, db, func(c *server.Config) {
			if c.ServerName == "a.test" {
				c.FederationDestinations["b.test"], refused = poisonProxy(t, c.FederationDestinations["b.test"], "poison-marker")
			}
		})
		aliceTok := a.device(alice, "A1")
		b1 := b.syncer(b.device(bob, "B1"))
		a.send(aliceTok, "p1", map[string]map[string]any{bob: {"B1": map[string]any{"n": 1, "x": "poison-marker"}}})
		a.send(aliceTok, "n2", map[string]map[string]any{bob: {"B1": map[string]any{"n": 2}}})
		a.send(aliceTok, "n3", map[string]map[string]any{bob: {"B1": map[string]any{"n": 3}}})
		require.Equal(t, []int{2, 3}, ns(b1.collect(2)), "the messages after the poison EDU arrive, in order")
		waitUntil(t, "the poison EDU to be dropped", func() bool {
			return a.metric("todeviced_federation_edus_dropped_total", "reason=poison") == 1
		})
		a.idle()
		require.GreaterOrEqual(t, refused.Load(), int64(federation.SplitAfter), "the destination refused it")
		require.Empty(t, b1.once(0), "the poison EDU never arrived")
	})
}
