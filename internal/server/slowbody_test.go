package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// A short --request-body-timeout for the tests. Nothing asserts how fast
// anything happens: the slow clients below would stay open forever without
// the deadline, and the test waits for the server to close them.
const testBodyTimeout = 200 * time.Millisecond

// slowUpload opens a connection, sends a request's headers announcing a
// body, then dribbles the body a byte at a time until the server answers.
// It returns the status line and whether the server closed the connection.
func slowUpload(t *testing.T, addr, token string) (status string, closed bool) {
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	// A safety net only: a server that never closes the connection fails
	// the test here instead of hanging it.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(time.Minute)))
	auth := ""
	if token != "" {
		auth = "Authorization: Bearer " + token + "\r\n"
	}
	_, err = fmt.Fprintf(conn, "PUT /_matrix/client/v3/sendToDevice/m.test/slow HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", auth)
	require.NoError(t, err)
	stop := make(chan struct{})
	var dribbler sync.WaitGroup
	dribbler.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := conn.Write([]byte("{")); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	defer func() { close(stop); dribbler.Wait() }()
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	require.NoError(t, err, "the server answers")
	_, err = io.Copy(io.Discard, br) // the rest of the answer, then the server hangs up
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server never closed the connection")
	return strings.TrimSpace(line), true
}

// 300 uploads at a byte a time, half without a token (refused before the
// body is read: the server's read of what is left is cut off) and half with
// one (the handler's read is cut off: 408), are all answered and closed by
// the deadline, and the server's goroutines return to where they were.
//
// Not parallel: it counts the process's goroutines.
func TestSlowBodiesAreCutOff(t *testing.T) {
	for _, b := range servertest.Backends() {
		t.Run(b.Name, func(t *testing.T) { slowBodiesAreCutOff(t, b.NewURL(t)) })
	}
}

func slowBodiesAreCutOff(t *testing.T, dbURL string) {
	{
		cfg := servertest.Config(dbURL)
		cfg.RequestBodyTimeout = testBodyTimeout
		in := servertest.Start(t, cfg, server.Options{})
		in.PutDevice(t, "@a:localhost", "A", "tok-a")
		in.Sync(t, "tok-a", "", 0) // warm up
		baseline := runtime.NumGoroutine()
		addr := strings.TrimPrefix(in.URL, "http://")

		const n = 300
		statuses := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			token := ""
			if i%2 == 1 {
				token = "tok-a"
			}
			wg.Go(func() { statuses[i], _ = slowUpload(t, addr, token) })
		}
		wg.Wait()
		for i, s := range statuses {
			if i%2 == 0 {
				require.Contains(t, s, " 401 ", "unauthenticated upload %d", i)
			} else {
				require.Contains(t, s, " 408 ", "authenticated upload %d", i)
			}
		}
		servertest.WaitFor(t, "goroutines back to the baseline", func() bool {
			return runtime.NumGoroutine() <= baseline+5
		})

		// A long-poll has no body: the deadline never touches it.
		r := in.RawSync(context.Background(), t, "tok-a", "", 3*testBodyTimeout)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	}
}

// Over h2c (HTTP/2 without TLS, as a reverse proxy speaks it) a slow body
// is cut off on its stream, and the connection goes on serving: a long-poll
// longer than the body deadline and a normal send on it both work, the send
// though its transaction is held open past the body deadline.
func TestSlowBodyOverH2C(t *testing.T) {
	cfg := servertest.Config("sqlite:" + t.TempDir() + "/todeviced.db")
	cfg.RequestBodyTimeout = testBodyTimeout
	in := servertest.Start(t, cfg, server.Options{InboxHooks: holdPastBodyDeadline})
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	defer tr.CloseIdleConnections()

	do := func(method, path string, body io.Reader) *http.Response {
		req, err := http.NewRequest(method, in.URL+path, body)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer tok-a")
		resp, err := client.Do(req)
		require.NoError(t, err)
		require.Equal(t, 2, resp.ProtoMajor, "h2c")
		return resp
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte(`{"messages":`)) }() // and nothing more
	resp := do(http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/slow", pr)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)

	resp = do(http.MethodGet, fmt.Sprintf("/_matrix/client/v3/sync?timeout=%d", (3*testBodyTimeout).Milliseconds()), nil)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "a long-poll outlasting the body deadline")
	resp = do(http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/fast", strings.NewReader(`{"messages":{"@a:localhost":{"A":{"n":1}}}}`))
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// holdPastBodyDeadline holds every send's transaction open past the body
// deadline, failing it if the request's context ends meanwhile.
var holdPastBodyDeadline = inbox.Hooks{
	BeforeAcceptCommit: func(ctx context.Context, a *inbox.Accept) error {
		select {
		case <-time.After(3 * testBodyTimeout):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	},
}

// The deadline ends with the body: a request whose body has arrived may
// take longer than the deadline to answer (here its database transaction is
// held open past it) without its context being cancelled under it.
func TestBodyDeadlineLiftedOnceRead(t *testing.T) {
	eachBackend(t, func(t *testing.T, db func() string) {
		cfg := servertest.Config(db())
		cfg.RequestBodyTimeout = testBodyTimeout
		in := servertest.Start(t, cfg, server.Options{InboxHooks: holdPastBodyDeadline})
		in.PutDevice(t, "@a:localhost", "A", "tok-a")
		in.Send(t, "tok-a", "m.test", "t1", map[string]map[string]any{"@a:localhost": {"A": map[string]any{"n": 1}}})
		require.Len(t, in.Sync(t, "tok-a", "", 0).ToDevice.Events, 1)
	})
}
