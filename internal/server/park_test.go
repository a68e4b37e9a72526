package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// rawClient speaks HTTP/1.1 on one TCP connection it controls, so tests
// can tell a connection handed back after a parked long-poll from a new one
// and pipeline requests.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t testing.TB, in *servertest.Instance) *rawClient {
	t.Helper()
	u, err := url.Parse(in.URL)
	require.NoError(t, err)
	c, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

func syncRequest(token, since string, timeoutMS int, extra string) string {
	q := url.Values{"timeout": {fmt.Sprint(timeoutMS)}}
	if since != "" {
		q.Set("since", since)
	}
	return "GET /_matrix/client/v3/sync?" + q.Encode() + " HTTP/1.1\r\nHost: todeviced\r\nAuthorization: Bearer " +
		token + "\r\n" + extra + "\r\n"
}

func (c *rawClient) write(s string) {
	c.t.Helper()
	_, err := io.WriteString(c.conn, s)
	require.NoError(c.t, err)
}

// read reads one response; the body is returned whole.
func (c *rawClient) read() (*http.Response, []byte) {
	c.t.Helper()
	require.NoError(c.t, c.conn.SetReadDeadline(time.Now().Add(time.Minute)))
	resp, err := http.ReadResponse(c.r, nil)
	require.NoError(c.t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, body
}

// versions asks for /versions on the connection and requires 200: the
// connection still serves requests.
func (c *rawClient) versions() {
	c.t.Helper()
	c.write("GET /_matrix/client/versions HTTP/1.1\r\nHost: todeviced\r\n\r\n")
	resp, _ := c.read()
	require.Equal(c.t, http.StatusOK, resp.StatusCode)
}

// initialSync syncs tok once without waiting and returns its next_batch.
func (c *rawClient) initialSync(tok string) string {
	c.t.Helper()
	c.write(syncRequest(tok, "", 0, ""))
	_, body := c.read()
	return decodeSync(c.t, body).NextBatch
}

// sendToB sends @b:localhost's device B message t1 from A.
func sendToB(t testing.TB, in *servertest.Instance) {
	t.Helper()
	in.Send(t, "tok-a", "m.test", "t1", map[string]map[string]any{"@b:localhost": {"B": map[string]any{"n": 1}}})
}

// answeredParked long-polls B's inbox on c from a fresh since, waits until
// the long-poll is parked, sends B a message and reads the answer (200).
func (c *rawClient) answeredParked(in *servertest.Instance, timeoutMS int) (*http.Response, []byte) {
	c.t.Helper()
	c.write(syncRequest("tok-b", c.initialSync("tok-b"), timeoutMS, ""))
	waitParked(c.t, in, 1)
	sendToB(c.t, in)
	resp, body := c.read()
	require.Equal(c.t, http.StatusOK, resp.StatusCode, "%s", body)
	return resp, body
}

// sqliteInstance starts an instance on a fresh SQLite database.
func sqliteInstance(t *testing.T, opts server.Options) *servertest.Instance {
	return servertest.Start(t, servertest.Config("sqlite:"+filepath.Join(t.TempDir(), "p.db")), opts)
}

type rawSync struct {
	NextBatch string `json:"next_batch"`
	ToDevice  struct {
		Events []struct {
			Type    string         `json:"type"`
			Content map[string]any `json:"content"`
		} `json:"events"`
	} `json:"to_device"`
}

func decodeSync(t testing.TB, body []byte) rawSync {
	t.Helper()
	var s rawSync
	require.NoError(t, json.Unmarshal(body, &s), "%s", body)
	return s
}

// waitParked waits until n long-polls are parked and registered with the
// hub.
func waitParked(t testing.TB, in *servertest.Instance, n int) {
	t.Helper()
	servertest.WaitFor(t, fmt.Sprintf("%d parked long-polls", n), func() bool {
		return in.Server.Parking().Len() == n && in.Server.Hub().Len() == n
	})
}

// A waiting HTTP/1.1 /sync gives its connection to the hub: the message
// that wakes it comes back on that connection with the headers the
// middleware set, and the connection then serves the next request (the
// acknowledging sync), so it was handed back to the server rather than
// closed.
func TestParkedLongPollAnswersOnItsConnection(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := servertest.Start(t, servertest.Config(b.NewURL(t)), server.Options{})
		in.PutDevice(t, "@a:localhost", "A", "tok-a")
		in.PutDevice(t, "@b:localhost", "B", "tok-b")
		c := dialRaw(t, in)

		c.write(syncRequest("tok-b", "", 0, ""))
		resp, body := c.read()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		first := decodeSync(t, body)

		c.write(syncRequest("tok-b", first.NextBatch, 60_000, ""))
		waitParked(t, in, 1)
		sendToB(t, in)

		resp, body = c.read()
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		require.Equal(t, "*", resp.Header.Get("Access-Control-Allow-Origin"), "the CORS middleware's headers survive the park")
		require.False(t, resp.Close, "the connection stays open")
		got := decodeSync(t, body)
		require.Len(t, got.ToDevice.Events, 1)
		require.Equal(t, float64(1), got.ToDevice.Events[0].Content["n"])
		waitParked(t, in, 0)

		// The same connection serves the next request: it acknowledges.
		c.write(syncRequest("tok-b", got.NextBatch, 0, ""))
		resp, body = c.read()
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.Empty(t, decodeSync(t, body).ToDevice.Events)
	})
}

// A parked long-poll that nothing wakes answers empty at its timeout, with
// the since it was given, and keeps its connection.
func TestParkedLongPollTimesOut(t *testing.T) {
	in := sqliteInstance(t, server.Options{})
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	since := c.initialSync("tok-b")

	c.write(syncRequest("tok-b", since, 2000, ""))
	waitParked(t, in, 1)
	require.Equal(t, float64(1), metric(t, in.Server.Registry(), "todeviced_http_parked_syncs"))
	resp, body := c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	got := decodeSync(t, body)
	require.Empty(t, got.ToDevice.Events)
	require.Equal(t, since, got.NextBatch)
	waitParked(t, in, 0)

	c.versions()
}

// A request the client pipelined behind a parked long-poll is read by the
// server the poll hands the connection back to, in order.
func TestParkedLongPollKeepsPipelinedRequest(t *testing.T) {
	in := sqliteInstance(t, server.Options{})
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	since := c.initialSync("tok-b")

	c.write(syncRequest("tok-b", since, 60_000, "") + "GET /_matrix/client/versions HTTP/1.1\r\nHost: todeviced\r\n\r\n")
	waitParked(t, in, 1)
	sendToB(t, in)
	resp, body := c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, decodeSync(t, body).ToDevice.Events, 1)
	resp, body = c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), `"versions"`)
}

// A client that closes its connection while parked is noticed by the
// sweep: its poll leaves the hub and is counted as 499, without waiting
// for its timeout.
func TestParkedLongPollClientGone(t *testing.T) {
	in := sqliteInstance(t, server.Options{Parking: httpapi.ParkingConfig{Sweep: 20 * time.Millisecond}})
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	c.write(syncRequest("tok-b", c.initialSync("tok-b"), 300_000, ""))
	waitParked(t, in, 1)
	require.NoError(t, c.conn.Close())
	waitParked(t, in, 0)
	servertest.WaitFor(t, "the 499 to be counted", func() bool {
		return metric(t, in.Server.Registry(), "todeviced_http_requests_total", "code=499") == 1
	})
}

// A device deleted while its long-poll is parked gets the same error as on
// a goroutine, written by the parked answer.
func TestParkedLongPollDeviceDeleted(t *testing.T) {
	in := sqliteInstance(t, server.Options{})
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	c.write(syncRequest("tok-b", c.initialSync("tok-b"), 300_000, ""))
	waitParked(t, in, 1)
	in.DeleteDevice(t, "@b:localhost", "B")
	resp, body := c.read()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "M_UNKNOWN_TOKEN")
}

// Shutdown answers parked long-polls (empty, so clients come back
// elsewhere) and closes their connections.
func TestParkedLongPollShutdown(t *testing.T) {
	in := sqliteInstance(t, server.Options{})
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	c.write(syncRequest("tok-b", c.initialSync("tok-b"), 300_000, ""))
	waitParked(t, in, 1)
	stopped := make(chan struct{})
	go func() { in.Stop(t); close(stopped) }()
	resp, body := c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.True(t, resp.Close, "Connection: close")
	_, err := c.r.ReadByte()
	require.ErrorIs(t, err, io.EOF)
	<-stopped
}

// Requests that cannot be taken over wait on their goroutine as before: an
// HTTP/1.1 request asking to close the connection, HTTP/1.0, and any
// request with --park-long-polls=false.
func TestLongPollsThatDoNotPark(t *testing.T) {
	for _, tc := range []struct {
		name  string
		park  bool
		proto string
		extra string
	}{
		{"connection close", true, "HTTP/1.1", "Connection: close\r\n"},
		{"HTTP/1.0", true, "HTTP/1.0", ""},
		{"parking off", false, "HTTP/1.1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := servertest.Config("sqlite:" + filepath.Join(t.TempDir(), "p.db"))
			cfg.ParkLongPolls = tc.park
			in := servertest.Start(t, cfg, server.Options{})
			in.PutDevice(t, "@a:localhost", "A", "tok-a")
			in.PutDevice(t, "@b:localhost", "B", "tok-b")
			since := in.Sync(t, "tok-b", "", 0).NextBatch
			c := dialRaw(t, in)
			c.write(strings.Replace(syncRequest("tok-b", since, 60_000, tc.extra), "HTTP/1.1", tc.proto, 1))
			servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Server.Hub().Len() == 1 })
			if tc.park {
				require.Equal(t, 0, in.Server.Parking().Len())
			} else {
				require.Nil(t, in.Server.Parking())
			}
			sendToB(t, in)
			resp, body := c.read()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			require.Len(t, decodeSync(t, body).ToDevice.Events, 1)
		})
	}
}

// BenchmarkParkedSyncMemory measures what one waiting HTTP/1.1 /sync
// costs the server with --park-long-polls on and off: b.N (at least 200)
// real TCP connections each send a long-poll, and the Go heap and stacks
// in use are compared with before (the client side of each connection, a
// socket and no goroutine, is in the same process and counted too).
func BenchmarkParkedSyncMemory(b *testing.B) {
	for _, park := range []bool{true, false} {
		b.Run(fmt.Sprintf("park=%v", park), func(b *testing.B) {
			cfg := servertest.Config("sqlite:" + filepath.Join(b.TempDir(), "p.db"))
			cfg.ParkLongPolls = park
			in := servertest.Start(b, cfg, server.Options{})
			n := max(b.N, 200)
			for i := range n {
				in.PutDevice(b, "@u:localhost", fmt.Sprint("D", i), fmt.Sprint("tok", i))
			}
			u, _ := url.Parse(in.URL)
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			before := ms.HeapInuse + ms.StackInuse
			conns := make([]net.Conn, n)
			b.ResetTimer()
			for i := range n {
				c, err := net.Dial("tcp", u.Host)
				if err != nil {
					b.Fatal(err)
				}
				conns[i] = c
				if _, err := io.WriteString(c, syncRequest(fmt.Sprint("tok", i), "", 600_000, "")); err != nil {
					b.Fatal(err)
				}
			}
			servertest.WaitFor(b, "every long-poll to wait", func() bool { return in.Server.Hub().Len() == n })
			b.StopTimer()
			for range 5 {
				runtime.GC()
			}
			runtime.ReadMemStats(&ms)
			if f := os.Getenv("PARK_HEAP_PROFILE"); f != "" {
				out, _ := os.Create(fmt.Sprintf("%s.%v", f, park))
				_ = pprof.WriteHeapProfile(out)
				out.Close()
			}
			b.ReportMetric(float64(int64(ms.HeapInuse+ms.StackInuse)-int64(before))/float64(n)/1024, "KiB/waiter")
			for _, c := range conns {
				c.Close()
			}
		})
	}
}

// A parked long-poll authenticates on the hub's workers: an unknown token
// is answered 401 there, on the parked connection, which then serves the
// next request.
func TestParkedLongPollUnknownToken(t *testing.T) {
	in := sqliteInstance(t, server.Options{})
	c := dialRaw(t, in)
	c.write(syncRequest("no-such-token", "", 60_000, ""))
	resp, body := c.read()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "M_UNKNOWN_TOKEN")
	c.versions()
}

// A remembered token that has moved to another device (the internal API
// gave B a new token and B's old one to C): the parked poll starts as B,
// its first check's guard fails, the token is looked up again, and the poll
// goes on parked as C, whose message ends it; B's message is not handed to
// C.
func TestParkedLongPollTokenMovedToAnotherDevice(t *testing.T) {
	in := sqliteInstance(t, server.Options{})
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	c.write(syncRequest("tok-b", "", 0, "")) // remembers tok-b as B
	_, body := c.read()
	sinceB := decodeSync(t, body).NextBatch
	in.Send(t, "tok-a", "m.test", "for-b", map[string]map[string]any{"@b:localhost": {"B": map[string]any{"to": "B"}}})
	in.PutDevice(t, "@b:localhost", "B", "tok-b-new")
	in.PutDevice(t, "@b:localhost", "C", "tok-b")

	c.write(syncRequest("tok-b", sinceB, 300_000, ""))
	resp, body := c.read() // at once: C's device-list change is news to C
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	asC := decodeSync(t, body)
	require.Empty(t, asC.ToDevice.Events, "B's message is not handed to C")
	require.NotEqual(t, strings.Split(sinceB, "_")[1], strings.Split(asC.NextBatch, "_")[1], "the next since is C's")

	c.write(syncRequest("tok-b", asC.NextBatch, 300_000, ""))
	waitParked(t, in, 1)
	in.Send(t, "tok-a", "m.test", "for-c", map[string]map[string]any{"@b:localhost": {"C": map[string]any{"to": "C"}}})
	resp, body = c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	got := decodeSync(t, body)
	require.Len(t, got.ToDevice.Events, 1)
	require.Equal(t, "C", got.ToDevice.Events[0].Content["to"])
}

// lingerInstance starts an instance whose /sync of a remembered token
// waits on its goroutine for linger before parking, in slots slots.
func lingerInstance(t *testing.T, linger time.Duration, slots int) *servertest.Instance {
	in := sqliteInstance(t, server.Options{Parking: httpapi.ParkingConfig{Linger: linger, LingerSlots: slots}})
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	in.PutDevice(t, "@b:localhost", "C", "tok-c")
	return in
}

// A /sync of a remembered token lingers on its goroutine first: woken
// within the linger it is answered there, never parked; waiting longer it
// parks, and is answered parked.
func TestLingeringSync(t *testing.T) {
	t.Run("answered while lingering", func(t *testing.T) {
		in := lingerInstance(t, time.Hour, 0)
		c := dialRaw(t, in)
		c.write(syncRequest("tok-b", c.initialSync("tok-b"), 60_000, "")) // remembered by the first
		servertest.WaitFor(t, "the sync to wait", func() bool { return in.Server.Hub().Len() == 1 })
		require.Equal(t, 0, in.Server.Parking().Len(), "lingering, not parked")
		sendToB(t, in)
		resp, body := c.read()
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.Len(t, decodeSync(t, body).ToDevice.Events, 1)
		require.Equal(t, 0, in.Server.Parking().Len())
	})
	t.Run("parked after the linger", func(t *testing.T) {
		in := lingerInstance(t, 20*time.Millisecond, 0)
		_, body := dialRaw(t, in).answeredParked(in, 60_000)
		require.Len(t, decodeSync(t, body).ToDevice.Events, 1)
	})
	t.Run("slots taken: parked at once", func(t *testing.T) {
		in := lingerInstance(t, time.Hour, 1)
		var since [2]string
		conns := [2]*rawClient{dialRaw(t, in), dialRaw(t, in)}
		for i, tok := range []string{"tok-b", "tok-c"} {
			conns[i].write(syncRequest(tok, "", 0, ""))
			_, body := conns[i].read()
			since[i] = decodeSync(t, body).NextBatch
		}
		conns[0].write(syncRequest("tok-b", since[0], 60_000, ""))
		servertest.WaitFor(t, "B to linger", func() bool { return in.Server.Hub().Len() == 1 })
		conns[1].write(syncRequest("tok-c", since[1], 60_000, ""))
		servertest.WaitFor(t, "C to park", func() bool { return in.Server.Hub().Len() == 2 && in.Server.Parking().Len() == 1 })
		in.Send(t, "tok-a", "m.test", "t1", map[string]map[string]any{"@b:localhost": {"*": map[string]any{"n": 1}}})
		for _, c := range conns {
			resp, body := c.read()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			require.Len(t, decodeSync(t, body).ToDevice.Events, 1)
		}
	})
	t.Run("token revoked while lingering", func(t *testing.T) {
		in := lingerInstance(t, time.Hour, 0)
		c := dialRaw(t, in)
		c.write(syncRequest("tok-b", c.initialSync("tok-b"), 60_000, ""))
		servertest.WaitFor(t, "the sync to linger", func() bool { return in.Server.Hub().Len() == 1 })
		in.DeleteDevice(t, "@b:localhost", "B") // wakes B: the next check's guard fails
		resp, body := c.read()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
		require.Contains(t, string(body), "M_UNKNOWN_TOKEN")
	})
}

// A flood of syncs with made-up tokens, while the workers are busy, queues
// up to the bound and no further: the next is refused 429 with
// Retry-After before anything is read, and the connection stays usable.
func TestParkedQueueIsBounded(t *testing.T) {
	in := sqliteInstance(t, server.Options{Parking: httpapi.ParkingConfig{MaxQueued: 2}})
	hub := in.Server.Hub()
	release := make(chan struct{})
	defer close(release)
	var busy atomic.Int32
	for range wakeup.MaxParkedWorkers {
		hub.Go(func() {
			busy.Add(1)
			<-release
		})
	}
	servertest.WaitFor(t, "every worker busy", func() bool { return busy.Load() == wakeup.MaxParkedWorkers })
	hub.Go(func() {})
	hub.Go(func() {})
	require.Equal(t, 2, hub.Queued())
	c := dialRaw(t, in)
	c.write(syncRequest("made-up", "", 30_000, ""))
	resp, body := c.read()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), "M_LIMIT_EXCEEDED")
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Equal(t, 0, in.Server.Parking().Len())
	c.versions()
}

// A connection handed back to net/http after a parked answer, idle since,
// is closed at shutdown like any idle keep-alive connection: net/http takes
// it for a new one and would otherwise hold its Shutdown for five seconds
// (here longer than the shutdown deadline, which would be logged).
func TestShutdownClosesHandedBackConnections(t *testing.T) {
	cfg := servertest.Config("sqlite:" + filepath.Join(t.TempDir(), "p.db"))
	cfg.ShutdownTimeout = 3 * time.Second
	var logs servertest.LockedBuffer
	in := servertest.StartLogged(t, cfg, server.Options{}, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	c := dialRaw(t, in)
	resp, _ := c.answeredParked(in, 300_000)
	require.False(t, resp.Close, "kept alive: handed back")

	in.Stop(t)
	_, err := c.r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "closed by the shutdown")
	require.NotContains(t, logs.String(), "did not finish before the shutdown deadline")
}

// A connection handed back after a parked answer waits for its next
// request as long as any kept-alive connection (the idle timeout), not
// the header timeout net/http gives a new connection; a request that has
// begun still gets only the header timeout to finish its header, and a
// connection silent past the idle timeout is closed.
func TestHandedBackConnectionWaitsTheIdleTimeout(t *testing.T) {
	const header, idle = 300 * time.Millisecond, 2500 * time.Millisecond
	in := sqliteInstance(t, server.Options{ReadHeaderTimeout: header, IdleTimeout: idle})
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	in.PutDevice(t, "@b:localhost", "B", "tok-b")

	c := dialRaw(t, in)
	resp, _ := c.answeredParked(in, 300_000)
	require.False(t, resp.Close, "kept alive: handed back")
	time.Sleep(time.Second)
	c.versions() // longer than the header timeout after the answer: still served

	// A parked answer again on the same connection (it was handed back,
	// served, and parks once more), then a request that starts and stalls
	// in its header: closed after the header timeout, not the idle one.
	c.write(syncRequest("tok-b", c.initialSync("tok-b"), 300_000, ""))
	waitParked(t, in, 1)
	in.Send(t, "tok-a", "m.test", "t2", map[string]map[string]any{"@b:localhost": {"B": map[string]any{"n": 2}}})
	resp, _ = c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	c.write("GET /_matrix/client/versions HTTP/1.1\r\n")
	start := time.Now()
	require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(time.Minute)))
	_, err := c.r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "a stalled header is cut off")
	require.Less(t, time.Since(start), idle, "by the header timeout")

	// Silent past the idle timeout after a parked answer: closed.
	c = dialRaw(t, in)
	c.write(syncRequest("tok-b", c.initialSync("tok-b"), 300_000, ""))
	waitParked(t, in, 1)
	in.Send(t, "tok-a", "m.test", "t3", map[string]map[string]any{"@b:localhost": {"B": map[string]any{"n": 3}}})
	resp, _ = c.read()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	start = time.Now()
	_, err = c.r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "closed once idle")
	require.GreaterOrEqual(t, time.Since(start), idle-header, "not before the idle timeout")
}
