package server_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// A request in flight when shutdown begins is finished, not cut off: a
// sendToDevice held inside its database transaction still commits and
// answers 200 after the server has stopped accepting connections.
func TestShutdownFinishesInFlightSend(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		dbURL := b.NewURL(t)
		entered, release := make(chan struct{}), make(chan struct{})
		var hold sync.Once
		hooks := inbox.Hooks{BeforeAcceptCommit: func(ctx context.Context, a *inbox.Accept) error {
			if a.Txn.TxnID == "held" {
				hold.Do(func() {
					close(entered)
					<-release
				})
			}
			return nil
		}}
		cfg := servertest.Config(dbURL)
		cfg.ShutdownTimeout = time.Minute // far beyond the test: the send finishes on its own
		in := servertest.Start(t, cfg, server.Options{InboxHooks: hooks})
		in.PutDevice(t, "@a:localhost", "A", "tok-a")
		in.PutDevice(t, "@b:localhost", "B", "tok-b")

		type result struct {
			status int
			err    error
		}
		sent := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPut, in.URL+"/_matrix/client/v3/sendToDevice/m.test/held",
				strings.NewReader(`{"messages":{"@b:localhost":{"B":{"held":true}}}}`))
			req.Header.Set("Authorization", "Bearer tok-a")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				sent <- result{err: err}
				return
			}
			resp.Body.Close()
			sent <- result{status: resp.StatusCode}
		}()
		<-entered

		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			in.Stop(t)
		}()
		// Shutdown has begun once /readyz says so (the metrics listener
		// stays up while the API drains) ...
		require.Equal(t, "shutting down\n", waitStatus(t, in, "/readyz", http.StatusServiceUnavailable))
		// ... and the API accepts no new connections.
		servertest.WaitFor(t, "the API listener to close", func() bool {
			c, err := net.Dial("tcp", strings.TrimPrefix(in.URL, "http://"))
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		select {
		case r := <-sent:
			t.Fatalf("the held send was answered before it was released: %+v", r)
		case <-stopped:
			t.Fatal("the server stopped with a request in flight")
		default:
		}

		close(release)
		r := <-sent
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.status, "the in-flight send completes")
		<-stopped

		// The message was stored: another instance on the database hands it out.
		again := servertest.Start(t, servertest.Config(dbURL), server.Options{})
		got := again.Sync(t, "tok-b", "", 0)
		require.Len(t, got.ToDevice.Events, 1)
		require.Equal(t, true, got.ToDevice.Events[0].Content["held"])
	})
}

// A request still running at --shutdown-timeout is cut off rather than
// holding the process: its connection is closed, its context ends, its
// transaction rolls back, and the server finishes shutting down.
func TestShutdownDeadlineCutsOffStuckRequests(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		dbURL := b.NewURL(t)
		entered := make(chan struct{})
		var hold sync.Once
		hooks := inbox.Hooks{BeforeAcceptCommit: func(ctx context.Context, a *inbox.Accept) error {
			if a.Txn.TxnID == "stuck" {
				hold.Do(func() { close(entered) })
				<-ctx.Done() // stuck until the request is cut off
				return ctx.Err()
			}
			return nil
		}}
		cfg := servertest.Config(dbURL)
		cfg.ShutdownTimeout = 50 * time.Millisecond
		in := servertest.Start(t, cfg, server.Options{InboxHooks: hooks})
		in.PutDevice(t, "@a:localhost", "A", "tok-a")
		in.PutDevice(t, "@b:localhost", "B", "tok-b")

		sent := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPut, in.URL+"/_matrix/client/v3/sendToDevice/m.test/stuck",
				strings.NewReader(`{"messages":{"@b:localhost":{"B":{"stuck":true}}}}`))
			req.Header.Set("Authorization", "Bearer tok-a")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			sent <- err
		}()
		<-entered
		in.Stop(t) // returns: the deadline does not wait for the stuck request
		require.Error(t, <-sent, "the cut-off request gets no answer")

		again := servertest.Start(t, servertest.Config(dbURL), server.Options{})
		require.Empty(t, again.Sync(t, "tok-b", "", 0).ToDevice.Events, "the cut-off send was rolled back")
	})
}
