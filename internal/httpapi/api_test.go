package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

const (
	alice = "@alice:localhost"
	bob   = "@bob:localhost"
)

func start(t *testing.T, b servertest.Backend) *servertest.Instance {
	return servertest.Start(t, servertest.Config(b.NewURL(t)), server.Options{})
}

func ns(events []servertest.Event) []int {
	out := make([]int, len(events))
	for i, e := range events {
		n, _ := e.Content["n"].(float64)
		out[i] = int(n)
	}
	return out
}

func TestSendAndSync(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")

		first := in.Sync(t, "tok-bob", "", 0)
		require.Empty(t, first.ToDevice.Events)
		require.NotEmpty(t, first.NextBatch)

		in.Send(t, "tok-alice", "m.room_key_request", "t1", map[string]map[string]any{bob: {"B1": map[string]any{"n": 1, "nested": map[string]any{"k": []any{"v"}}}}})
		r := in.RawSync(context.Background(), t, "tok-bob", first.NextBatch, 0)
		require.Equal(t, http.StatusOK, r.Status)
		require.JSONEq(t, `[{"sender":"@alice:localhost","type":"m.room_key_request","content":{"n":1,"nested":{"k":["v"]}}}]`,
			string(mustField(t, r.Body, "to_device", "events")), "an event is exactly sender, type and content")
		body := r.JSON(t)
		require.Contains(t, body, "next_batch")
		require.Equal(t, map[string]any{"join": map[string]any{}, "invite": map[string]any{}, "leave": map[string]any{}, "knock": map[string]any{}}, body["rooms"])

		// The r0 path works the same.
		r = in.Do(t, http.MethodPut, "/_matrix/client/r0/sendToDevice/m.test/t2", "tok-alice", `{"messages":{"@bob:localhost":{"B1":{"n":2}}}}`)
		require.Equal(t, http.StatusOK, r.Status)
		require.JSONEq(t, `{}`, string(r.Body))
	})
}

func TestSyncPagesOf100WithoutWaiting(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		for i := range 250 {
			in.Send(t, "tok-alice", "m.test", fmt.Sprint(i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		// A long timeout: a sync that waited for it would hang the test.
		const long = 10 * time.Minute
		s1 := in.Sync(t, "tok-bob", "", long)
		require.Equal(t, seq(0, 100), ns(s1.ToDevice.Events))
		s2 := in.Sync(t, "tok-bob", s1.NextBatch, long)
		require.Equal(t, seq(100, 200), ns(s2.ToDevice.Events))
		s3 := in.Sync(t, "tok-bob", s2.NextBatch, long)
		require.Equal(t, seq(200, 250), ns(s3.ToDevice.Events))

		again := in.Sync(t, "tok-bob", s2.NextBatch, long)
		require.Equal(t, seq(200, 250), ns(again.ToDevice.Events), "an old since gets the same batch again")
		require.Equal(t, s3.NextBatch, again.NextBatch)

		empty := in.Sync(t, "tok-bob", s3.NextBatch, 0)
		require.Empty(t, empty.ToDevice.Events)
	})
}

func TestLongPollWakesOnAnotherInstance(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		a, bb := twoReplicas(t, b)
		a.PutDevice(t, alice, "A1", "tok-alice")
		a.PutDevice(t, bob, "B1", "tok-bob")
		s := bb.Sync(t, "tok-bob", "", 0)

		got := make(chan servertest.SyncResponse, 1)
		go func() { got <- bb.Sync(t, "tok-bob", s.NextBatch, 10*time.Minute) }()
		servertest.WaitFor(t, "the long-poll to wait on instance B", func() bool { return bb.Hub().Len() == 1 })
		a.Send(t, "tok-alice", "m.test", "x", map[string]map[string]any{bob: {"B1": map[string]any{"n": 7}}})
		res := <-got
		require.Equal(t, []int{7}, ns(res.ToDevice.Events), "instance B's long-poll woke for instance A's message")
	})
}

func TestStarAndUnknownRecipients(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		for _, d := range []string{"B1", "B2", "B3"} {
			in.PutDevice(t, bob, d, "tok-"+d)
		}
		in.Send(t, "tok-alice", "m.test", "star", map[string]map[string]any{
			bob:                  {"*": map[string]any{"n": 1}},
			"@nobody:localhost":  {"X": map[string]any{"n": 2}},
			alice:                {"NOSUCH": map[string]any{"n": 3}},
			"@ghost:localhost":   {"*": map[string]any{"n": 4}},
			"@remote:other.test": {"R": map[string]any{"n": 5}},
		})
		for _, d := range []string{"B1", "B2", "B3"} {
			s := in.Sync(t, "tok-"+d, "", 0)
			require.Equal(t, []int{1}, ns(s.ToDevice.Events), "device %s gets * exactly once", d)
		}
		s := in.Sync(t, "tok-alice", "", 0)
		require.Empty(t, s.ToDevice.Events)
	})
}

func TestDeleteDevice(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		for i := range 30 {
			in.Send(t, "tok-alice", "m.test", fmt.Sprint(i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		s := in.Sync(t, "tok-bob", "", 0)
		require.Len(t, s.ToDevice.Events, 30)

		// Drain, then long-poll: the wait is answered 401 when the device goes.
		s = in.Sync(t, "tok-bob", s.NextBatch, 0)
		waiting := make(chan servertest.Response, 1)
		go func() { waiting <- in.RawSync(context.Background(), t, "tok-bob", s.NextBatch, 10*time.Minute) }()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
		for i := range 5 { // pending messages the purge must remove
			in.Send(t, "tok-alice", "m.test", fmt.Sprint("p", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": 100 + i}}})
		}
		r := <-waiting
		require.Equal(t, http.StatusOK, r.Status)
		s = in.Sync(t, "tok-bob", "", 0) // leave messages pending

		del := in.DeleteDevice(t, bob, "B1")
		require.Equal(t, http.StatusOK, del.Status, "%s", del.Body)

		r = in.RawSync(context.Background(), t, "tok-bob", s.NextBatch, 0)
		require.Equal(t, http.StatusUnauthorized, r.Status)
		require.Equal(t, "M_UNKNOWN_TOKEN", r.Errcode(t), "the token stops working at once")

		servertest.WaitFor(t, "the deleted device's inbox to be purged", func() bool {
			tombs, err := in.Devices().Tombstones(context.Background(), 10)
			require.NoError(t, err)
			return len(tombs) == 0
		})
		require.Equal(t, http.StatusNotFound, in.DeleteDevice(t, bob, "B1").Status)

		in.PutDevice(t, bob, "B1", "tok-bob-2")
		fresh := in.Sync(t, "tok-bob-2", "", 0)
		require.Empty(t, fresh.ToDevice.Events, "a re-created device starts empty")
		in.Send(t, "tok-alice", "m.test", "new", map[string]map[string]any{bob: {"B1": map[string]any{"n": 9}}})
		// The old incarnation's since acknowledges nothing of the new one.
		got := in.Sync(t, "tok-bob-2", s.NextBatch, 0)
		require.Equal(t, []int{9}, ns(got.ToDevice.Events))
	})
}

func TestLongPollAnsweredWhenDeviceDeleted(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		s := in.Sync(t, "tok-bob", "", 0)
		waiting := make(chan servertest.Response, 1)
		go func() { waiting <- in.RawSync(context.Background(), t, "tok-bob", s.NextBatch, 10*time.Minute) }()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
		require.Equal(t, http.StatusOK, in.DeleteDevice(t, bob, "B1").Status)
		r := <-waiting
		require.Equal(t, http.StatusUnauthorized, r.Status, "%s", r.Body)
		require.Equal(t, "M_UNKNOWN_TOKEN", r.Errcode(t))
	})
}

func TestTransactionIDs(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		url := b.NewURL(t)
		in := servertest.Start(t, servertest.Config(url), server.Options{})
		other := in
		if b.MultiInstance {
			other = servertest.Start(t, servertest.Config(url), server.Options{})
		}
		in.PutDevice(t, alice, "A1", "tok-a1")
		in.PutDevice(t, alice, "A2", "tok-a2")
		in.PutDevice(t, bob, "B1", "tok-bob")
		body := `{"messages":{"@bob:localhost":{"B1":{"n":1}}}}`

		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				target := in
				if i%2 == 1 {
					target = other
				}
				r := target.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/same", "tok-a1", body)
				require.Equal(t, http.StatusOK, r.Status)
				require.JSONEq(t, `{}`, string(r.Body))
			})
		}
		wg.Wait()
		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{1}, ns(s.ToDevice.Events), "concurrent retries, on two instances, enqueue once")

		// Later retries still dedupe; another device or event type is new.
		require.Equal(t, http.StatusOK, other.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/same", "tok-a1", body).Status)
		require.Equal(t, http.StatusOK, in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/same", "tok-a2", `{"messages":{"@bob:localhost":{"B1":{"n":2}}}}`).Status)
		require.Equal(t, http.StatusOK, in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.other/same", "tok-a1", `{"messages":{"@bob:localhost":{"B1":{"n":3}}}}`).Status)
		s = in.Sync(t, "tok-bob", s.NextBatch, 0)
		require.Equal(t, []int{2, 3}, ns(s.ToDevice.Events))
	})
}

func TestBadInputGetsMatrixErrorsAndEnqueuesNothing(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		cfg := servertest.Config(b.NewURL(t))
		cfg.MaxSendBytes = 256 << 10
		in := servertest.Start(t, cfg, server.Options{})
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		send := "/_matrix/client/v3/sendToDevice/m.test/"
		good := `{"messages":{"@bob:localhost":{"B1":{"n":1}}}}`
		huge := `{"messages":{"@bob:localhost":{"B1":{"k":"` + strings.Repeat("x", 70<<10) + `"}}}}`
		tooBig := `{"messages":{"@bob:localhost":{"B1":{"k":"` + strings.Repeat("x", 300<<10) + `"}}}}`
		cases := []struct {
			name, method, path, token, body string
			status                          int
			errcode                         string
		}{
			{"not JSON", "PUT", send + "1", "tok-alice", `{"messages":`, 400, "M_NOT_JSON"},
			{"messages missing", "PUT", send + "2", "tok-alice", `{}`, 400, "M_MISSING_PARAM"},
			{"messages not an object", "PUT", send + "3", "tok-alice", `{"messages":[1]}`, 400, "M_BAD_JSON"},
			{"content not an object", "PUT", send + "4", "tok-alice", `{"messages":{"@bob:localhost":{"B1":"hi"}}}`, 400, "M_BAD_JSON"},
			{"malformed user id", "PUT", send + "5", "tok-alice", `{"messages":{"@bob:localhost":{"B1":{}},"bob":{"B1":{}}}}`, 400, "M_INVALID_PARAM"},
			{"body over the limit", "PUT", send + "6", "tok-alice", tooBig, 413, "M_TOO_LARGE"},
			{"message over 64 KiB", "PUT", send + "7", "tok-alice", huge, 413, "M_TOO_LARGE"},
			{"event type over 255 bytes", "PUT", "/_matrix/client/v3/sendToDevice/" + strings.Repeat("t", 256) + "/8", "tok-alice", good, 413, "M_TOO_LARGE"},
			{"missing token", "PUT", send + "9", "", good, 401, "M_MISSING_TOKEN"},
			{"unknown token", "PUT", send + "10", "nope", good, 401, "M_UNKNOWN_TOKEN"},
			{"malformed since", "GET", "/_matrix/client/v3/sync?since=garbage", "tok-alice", "", 400, "M_INVALID_PARAM"},
			{"forged since", "GET", "/_matrix/client/v3/sync?since=abc_1_9_2_0", "tok-alice", "", 400, "M_INVALID_PARAM"},
			{"bad timeout", "GET", "/_matrix/client/v3/sync?timeout=soon", "tok-alice", "", 400, "M_INVALID_PARAM"},
			{"unknown route", "GET", "/_matrix/client/v3/nothing", "tok-alice", "", 404, "M_UNRECOGNIZED"},
			{"wrong method", "POST", send + "11", "tok-alice", good, 405, "M_UNRECOGNIZED"},
		}
		for _, c := range cases {
			var body any
			if c.body != "" {
				body = c.body
			}
			r := in.Do(t, c.method, c.path, c.token, body)
			require.Equal(t, c.status, r.Status, "%s: %s", c.name, r.Body)
			require.Equal(t, c.errcode, r.Errcode(t), "%s", c.name)
			require.Equal(t, "application/json", r.Header.Get("Content-Type"), c.name)
		}
		s := in.Sync(t, "tok-bob", "", 0)
		require.Empty(t, s.ToDevice.Events, "no bad request enqueued anything")
	})
}

func TestInternalAPI(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		url := b.NewURL(t)
		cfg := servertest.Config(url)
		in := servertest.Start(t, cfg, server.Options{})
		const dev = "/_todeviced/internal/v1/users/@bob:localhost/devices/B1"

		r := in.Do(t, "PUT", dev, "", `{"access_token":"t1"}`)
		require.Equal(t, 401, r.Status)
		require.Equal(t, "M_MISSING_TOKEN", r.Errcode(t))
		r = in.Do(t, "PUT", dev, "wrong", `{"access_token":"t1"}`)
		require.Equal(t, 401, r.Status)
		require.Equal(t, "M_UNKNOWN_TOKEN", r.Errcode(t))

		for _, c := range []struct{ body, errcode string }{
			{`{"access_token":`, "M_NOT_JSON"},
			{`{"access_token":5}`, "M_BAD_JSON"},
			{`{"access_token":""}`, "M_INVALID_PARAM"},
			{`[]`, "M_BAD_JSON"},
		} {
			r = in.Do(t, "PUT", dev, servertest.Secret, c.body)
			require.Equal(t, 400, r.Status, c.body)
			require.Equal(t, c.errcode, r.Errcode(t), c.body)
		}
		r = in.Do(t, "PUT", "/_todeviced/internal/v1/users/@bob:elsewhere/devices/B1", servertest.Secret, `{}`)
		require.Equal(t, 400, r.Status, "a remote user's device cannot be created")
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))

		in.PutDevice(t, bob, "B1", "t1")
		require.Equal(t, 200, in.RawSync(context.Background(), t, "t1", "", 0).Status)
		in.PutDevice(t, bob, "B1", "t2")
		require.Equal(t, 401, in.RawSync(context.Background(), t, "t1", "", 0).Status, "a new token revokes the old one")
		require.Equal(t, 200, in.RawSync(context.Background(), t, "t2", "", 0).Status)

		in.PutDevice(t, alice, "A1", "ta")
		for i := range 5 {
			in.Send(t, "ta", "m.test", fmt.Sprint(i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		isync := func(q string) servertest.Response {
			return in.Do(t, "GET", "/_todeviced/internal/v1/sync?user_id=%40bob%3Alocalhost&device_id=B1"+q, servertest.Secret, nil)
		}
		r = isync("&limit=2")
		require.Equal(t, 200, r.Status, "%s", r.Body)
		body := r.JSON(t)
		td := body["to_device"].(map[string]any)
		require.Len(t, td["events"], 2)
		require.Equal(t, true, td["limited"])
		r = isync("&limit=100&to_device_since=" + td["next_batch"].(string))
		td = r.JSON(t)["to_device"].(map[string]any)
		require.Len(t, td["events"], 3)
		require.Equal(t, false, td["limited"])
		require.Contains(t, r.JSON(t), "device_lists")

		for _, q := range []string{"&limit=0", "&limit=x", "&to_device_since=zz", "&timeout=-1"} {
			r = isync(q)
			require.Equal(t, 400, r.Status, q)
			require.Equal(t, "M_INVALID_PARAM", r.Errcode(t), q)
		}
		r = in.Do(t, "GET", "/_todeviced/internal/v1/sync?user_id=%40bob%3Alocalhost", servertest.Secret, nil)
		require.Equal(t, "M_MISSING_PARAM", r.Errcode(t))
		r = in.Do(t, "GET", "/_todeviced/internal/v1/sync?user_id=%40bob%3Alocalhost&device_id=NOPE", servertest.Secret, nil)
		require.Equal(t, 404, r.Status)
		require.Equal(t, http.StatusNotFound, in.DeleteDevice(t, bob, "NOPE").Status)

		// Without a secret the internal API does not exist.
		cfg2 := servertest.Config(url)
		cfg2.InternalSecret = ""
		if !b.MultiInstance {
			in.Stop(t) // one server per database
		}
		off := servertest.Start(t, cfg2, server.Options{})
		r = off.Do(t, "PUT", dev, "", `{}`)
		require.Equal(t, 404, r.Status)
		require.Equal(t, "M_UNRECOGNIZED", r.Errcode(t))
	})
}

func TestGracefulShutdownAnswersLongPolls(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		s := in.Sync(t, "tok-bob", "", 0)
		waiting := make(chan servertest.Response, 1)
		go func() { waiting <- in.RawSync(context.Background(), t, "tok-bob", s.NextBatch, 10*time.Minute) }()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
		in.Stop(t)
		r := <-waiting
		require.Equal(t, http.StatusOK, r.Status, "a shutting-down server answers its long-polls")
		require.Empty(t, r.JSON(t)["to_device"].(map[string]any)["events"])
		require.Equal(t, s.NextBatch, r.JSON(t)["next_batch"], "nothing was acknowledged beyond the since")
	})
}

func TestVersionsAndCORS(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		r := in.Do(t, "GET", "/_matrix/client/versions", "", nil)
		require.Equal(t, 200, r.Status)
		require.JSONEq(t, `{"versions":[],"unstable_features":{"org.matrix.simplified_msc3575":true,"org.matrix.msc3814":true}}`, string(r.Body),
			"a spec version claims the whole client-server API; standalone todeviced serves a few endpoints of it, and two unstable features whole")
		r = in.Do(t, "OPTIONS", "/_matrix/client/v3/sync", "", nil)
		require.Equal(t, http.StatusNoContent, r.Status)
		require.Equal(t, "*", r.Header.Get("Access-Control-Allow-Origin"))
	})
}

// TestMethodNotAllowedSaysAllow: a 405 names the methods the resource has
// (RFC 9110), through the real router: client, internal and unknown-method
// cases.
func TestMethodNotAllowedSaysAllow(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		for _, c := range []struct{ method, path, token, allow string }{
			{"POST", "/_matrix/client/v3/sendToDevice/m.test/t1", "tok-alice", "PUT, OPTIONS"},
			{"DELETE", "/_matrix/client/v3/sync", "tok-alice", "GET, OPTIONS"},
			{"GET", "/_matrix/client/r0/keys/query", "tok-alice", "POST, OPTIONS"},
			{"POST", "/_matrix/client/versions", "", "GET, OPTIONS"},
			{"PATCH", "/_todeviced/internal/v1/users/%40bob%3Alocalhost/devices/B1", servertest.Secret, "PUT, DELETE"},
			{"POST", "/_todeviced/internal/v1/rooms/%21r%3Alocalhost/members", servertest.Secret, "PUT"},
		} {
			r := in.Do(t, c.method, c.path, c.token, nil)
			require.Equal(t, http.StatusMethodNotAllowed, r.Status, "%s %s: %s", c.method, c.path, r.Body)
			require.Equal(t, "M_UNRECOGNIZED", r.Errcode(t))
			require.Equal(t, c.allow, r.Header.Get("Allow"), "%s %s", c.method, c.path)
		}
	})
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func TestSendRateLimit(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		cfg := servertest.Config(b.NewURL(t))
		cfg.SendRateLimit, cfg.SendBurst = 0.001, 2
		in := servertest.Start(t, cfg, server.Options{})
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		body := func(n int) string { return fmt.Sprintf(`{"messages":{"@bob:localhost":{"B1":{"n":%d}}}}`, n) }
		require.Equal(t, 200, in.Do(t, "PUT", "/_matrix/client/v3/sendToDevice/m.test/1", "tok-alice", body(1)).Status)
		require.Equal(t, 200, in.Do(t, "PUT", "/_matrix/client/v3/sendToDevice/m.test/2", "tok-alice", body(2)).Status)
		r := in.Do(t, "PUT", "/_matrix/client/v3/sendToDevice/m.test/3", "tok-alice", body(3))
		require.Equal(t, http.StatusTooManyRequests, r.Status)
		require.Equal(t, "M_LIMIT_EXCEEDED", r.Errcode(t))
		require.NotEmpty(t, r.Header.Get("Retry-After"))
		require.Greater(t, r.JSON(t)["retry_after_ms"], float64(0))
		require.Equal(t, 200, in.Do(t, "PUT", "/_matrix/client/v3/sendToDevice/m.test/4", "tok-bob", `{"messages":{"@alice:localhost":{"A1":{"n":4}}}}`).Status, "other devices are not limited")
		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{1, 2}, ns(s.ToDevice.Events), "the refused request enqueued nothing")
	})
}

// Quiet devices across replicas: a long-poll that skipped its first check
// on one replica is woken by a message sent through another, and a message
// sent through another between an answer and the next long-poll ends that
// long-poll at once (its NOTIFY made the device unquiet, or wakes the
// long-poll that skipped).
func TestQuietLongPollAcrossReplicas(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		a, bb := twoReplicas(t, b)
		servertest.WaitFor(t, "instance B to hear wake-ups", func() bool { return !bb.Hub().Deaf() })
		a.PutDevice(t, alice, "A1", "tok-alice")
		a.PutDevice(t, bob, "B1", "tok-bob")
		s := bb.Sync(t, "tok-bob", "", 0)

		_, skipped := bb.SyncChecks()
		got := make(chan servertest.SyncResponse, 1)
		go func() { got <- bb.Sync(t, "tok-bob", s.NextBatch, 10*time.Minute) }()
		servertest.WaitFor(t, "the long-poll on B to skip its first check", func() bool { _, k := bb.SyncChecks(); return k == skipped+1 })
		a.Send(t, "tok-alice", "m.test", "x", map[string]map[string]any{bob: {"B1": map[string]any{"n": 7}}})
		s = <-got
		require.Equal(t, []int{7}, ns(s.ToDevice.Events))

		for i := range 5 {
			a.Send(t, "tok-alice", "m.test", fmt.Sprint("between", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
			c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			r := bb.RawSync(c, t, "tok-bob", s.NextBatch, time.Hour)
			cancel()
			require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
			var next servertest.SyncResponse
			require.NoError(t, json.Unmarshal(r.Body, &next))
			require.Equal(t, []int{i}, ns(next.ToDevice.Events), "sent between the answer and the long-poll")
			s = next
		}
	})
}
