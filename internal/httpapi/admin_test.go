package httpapi_test

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

const adminSecret = "test-admin-secret-8c1f"

// startAdmin starts an instance with the admin API on, logging to the
// returned buffer.
func startAdmin(t *testing.T, b servertest.Backend) (*servertest.Instance, *lockedBuffer) {
	cfg := servertest.Config(b.NewURL(t))
	cfg.AdminSecret = adminSecret
	logs := &lockedBuffer{}
	return servertest.StartLogged(t, cfg, server.Options{}, slog.New(slog.NewJSONHandler(logs, nil))), logs
}

func TestAdminAPIAuth(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		off := start(t, b)
		r := off.Do(t, "GET", "/_todeviced/admin/v1/inboxes/largest", adminSecret, nil)
		require.Equal(t, 404, r.Status, "no admin secret, no admin API")
		require.Equal(t, "M_UNRECOGNIZED", r.Errcode(t))

		in, logs := startAdmin(t, b)
		const path = "/_todeviced/admin/v1/inboxes/largest"
		r = in.Do(t, "GET", path, "", nil)
		require.Equal(t, 401, r.Status)
		require.Equal(t, "M_MISSING_TOKEN", r.Errcode(t))
		r = in.Do(t, "GET", path+"?access_token="+adminSecret, "", nil)
		require.Equal(t, 401, r.Status, "the secret is taken from the Authorization header only")
		r = in.Do(t, "GET", path, servertest.Secret, nil)
		require.Equal(t, 401, r.Status, "the internal secret is not the admin's")
		require.Equal(t, "M_UNKNOWN_TOKEN", r.Errcode(t))
		r = in.Do(t, "GET", path, adminSecret, nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"inboxes":[]}`, string(r.Body))
		require.Contains(t, logs.String(), `"msg":"admin request refused"`)
		require.NotContains(t, logs.String(), adminSecret, "the secret is never logged")
	})
}

func TestAdminInboxActions(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, logs := startAdmin(t, b)
		in.PutDevice(t, alice, "A1", "ta")
		in.PutDevice(t, bob, "B1", "tb")
		in.PutDevice(t, bob, "B2", "tb2")
		in.PutDevice(t, "@carol:localhost", "C1", "tc")
		for i := range 3 {
			in.Send(t, "tc", "m.spam", "s"+string(rune('0'+i)), map[string]map[string]any{bob: {"*": map[string]any{"n": i}}})
		}
		in.Send(t, "ta", "m.room_key", "k", map[string]map[string]any{bob: {"B1": map[string]any{"n": 10}}})

		admin := func(method, path string, body any) map[string]any {
			t.Helper()
			r := in.Do(t, method, "/_todeviced/admin/v1"+path, adminSecret, body)
			require.Equal(t, 200, r.Status, "%s %s: %s", method, path, r.Body)
			return r.JSON(t)
		}
		got := admin("GET", "/users/@bob:localhost/devices/B1/inbox", nil)
		require.EqualValues(t, 4, got["count"])
		require.NotNil(t, got["oldest_ts"])
		require.Equal(t, []any{map[string]any{"key": "m.spam", "count": 3.0}, map[string]any{"key": "m.room_key", "count": 1.0}}, got["by_type"])
		require.Equal(t, []any{map[string]any{"key": "@carol:localhost", "count": 3.0}, map[string]any{"key": alice, "count": 1.0}}, got["by_sender"])

		devs := admin("GET", "/users/@bob:localhost/devices", nil)["devices"].([]any)
		require.Len(t, devs, 2)
		require.Equal(t, "B1", devs[0].(map[string]any)["device_id"])
		require.EqualValues(t, 4, devs[0].(map[string]any)["count"])
		require.EqualValues(t, 3, devs[1].(map[string]any)["count"])

		top := admin("GET", "/inboxes/largest?limit=1", nil)["inboxes"].([]any)
		require.Len(t, top, 1)
		require.Equal(t, "B1", top[0].(map[string]any)["device_id"])

		r := in.Do(t, "POST", "/_todeviced/admin/v1/users/@bob:localhost/devices/B1/inbox/purge", adminSecret, `{"type":"m.spam","sender":"@carol:localhost"}`)
		require.Equal(t, 400, r.Status)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		require.EqualValues(t, 3, admin("POST", "/users/@bob:localhost/devices/B2/inbox/purge", map[string]string{"type": "m.spam"})["purged"])
		require.EqualValues(t, 0, admin("GET", "/users/@bob:localhost/devices/B2/inbox", nil)["count"])
		require.EqualValues(t, 4, admin("GET", "/users/@bob:localhost/devices/B1/inbox", nil)["count"], "a purge never touches another device's rows")
		require.EqualValues(t, 3, admin("POST", "/users/@bob:localhost/devices/B1/inbox/purge", map[string]string{"sender": "@carol:localhost"})["purged"])

		// What is left is delivered; a long-poll waiting through a purge is
		// unaffected and answers the next message.
		first := in.Sync(t, "tb", "", 0)
		require.Equal(t, []int{10}, ns(first.ToDevice.Events))
		polled := make(chan servertest.SyncResponse, 1)
		go func() { polled <- in.Sync(t, "tb", first.NextBatch, 20*time.Second) }()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
		// The long-poll acknowledges message 10 at its first check, which
		// a quiet device's long-poll makes at its first wake-up: the
		// purge finds it or not, delivered either way.
		require.Contains(t, []any{0.0, 1.0}, admin("POST", "/users/@bob:localhost/devices/B1/inbox/purge", map[string]any{})["purged"])
		in.Send(t, "ta", "m.room_key", "k2", map[string]map[string]any{bob: {"B1": map[string]any{"n": 11}}})
		select {
		case res := <-polled:
			require.Equal(t, []int{11}, ns(res.ToDevice.Events))
		case <-time.After(15 * time.Second):
			t.Fatal("the long-poll did not answer the message sent after the purge")
		}

		// Errors.
		for _, c := range []struct {
			method, path string
			body         any
			status       int
		}{
			{"GET", "/users/@bob:localhost/devices/NOPE/inbox", nil, 404},
			{"GET", "/users/@bob:elsewhere/devices/B1/inbox", nil, 400},
			{"GET", "/users/bob/devices", nil, 400},
			{"GET", "/inboxes/largest?limit=0", nil, 400},
			{"GET", "/inboxes/largest?limit=1001", nil, 400},
			{"POST", "/users/@bob:localhost/devices/B1/inbox/purge", `[]`, 400},
			{"POST", "/users/@bob:localhost/devices/B1/inbox/purge", `{"sender":"carol"}`, 400},
		} {
			r := in.Do(t, c.method, "/_todeviced/admin/v1"+c.path, adminSecret, c.body)
			require.Equal(t, c.status, r.Status, "%s %s: %s", c.method, c.path, r.Body)
		}

		// The audit log: one line per action, who and what, never the secret.
		var purge map[string]any
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `"action":"purge inbox"`) && strings.Contains(line, `"device_id":"B2"`) {
				require.NoError(t, json.Unmarshal([]byte(line), &purge))
			}
		}
		require.NotNil(t, purge, "no audit line for the purge in %s", logs.String())
		require.Equal(t, "admin action", purge["msg"])
		require.Equal(t, "INFO", purge["level"])
		require.Equal(t, httpapi.SecretHash(adminSecret), purge["secret"])
		require.Contains(t, purge["remote"], "127.0.0.1:")
		require.Equal(t, bob, purge["user_id"])
		require.Equal(t, "m.spam", purge["type"])
		require.EqualValues(t, 3, purge["purged"])
		require.NotContains(t, logs.String(), adminSecret)
	})
}

func TestAdminDestinations(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		cfg := servertest.Config(b.NewURL(t))
		cfg.AdminSecret = adminSecret
		cfg.ServerName = "a.test"
		cfg.SigningKey = t.TempDir() + "/a.key"
		cfg.FederationDestinations = map[string]string{"remote.test": "http://127.0.0.1:1", "other.test": "http://127.0.0.1:1"}
		cfg.FederationBackoffMin, cfg.FederationBackoffMax = time.Hour, 2*time.Hour
		logs := &lockedBuffer{}
		in := servertest.StartLogged(t, cfg, server.Options{}, slog.New(slog.NewJSONHandler(logs, nil)))
		in.PutDevice(t, "@alice:a.test", "A1", "ta")
		for i, u := range []string{"@x:remote.test", "@y:remote.test", "@z:other.test"} {
			in.Send(t, "ta", "m.test", "r"+string(rune('0'+i)), map[string]map[string]any{u: {"D": map[string]any{"n": i}}})
		}

		list := func() map[string]map[string]any {
			r := in.Do(t, "GET", "/_todeviced/admin/v1/federation/destinations", adminSecret, nil)
			require.Equal(t, 200, r.Status, "%s", r.Body)
			out := map[string]map[string]any{}
			for _, d := range r.JSON(t)["destinations"].([]any) {
				m := d.(map[string]any)
				out[m["destination"].(string)] = m
			}
			return out
		}
		servertest.WaitFor(t, "both destinations backing off after a failed attempt", func() bool {
			ds := list()
			return len(ds) == 2 && ds["remote.test"]["backing_off"] == true && ds["other.test"]["backing_off"] == true
		})
		remote := list()["remote.test"]
		require.EqualValues(t, 2, remote["queued"])
		require.NotNil(t, remote["oldest_ts"])
		require.EqualValues(t, 1, remote["failures"])
		require.EqualValues(t, 1, remote["txn_attempts"])
		require.NotEmpty(t, remote["txn_id"])

		// Retry now: the sender tries again at once, not in an hour.
		r := in.Do(t, "POST", "/_todeviced/admin/v1/federation/destinations/remote.test/retry", adminSecret, nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"found":true}`, string(r.Body))
		servertest.WaitFor(t, "a second attempt", func() bool { return list()["remote.test"]["txn_attempts"] == 2.0 })

		// Drop the queue: only that destination's.
		r = in.Do(t, "POST", "/_todeviced/admin/v1/federation/destinations/remote.test/drop", adminSecret, nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"dropped":2}`, string(r.Body))
		ds := list()
		require.EqualValues(t, 0, ds["remote.test"]["queued"])
		require.Nil(t, ds["remote.test"]["txn_id"])
		require.EqualValues(t, 1, ds["other.test"]["queued"])

		r = in.Do(t, "POST", "/_todeviced/admin/v1/federation/destinations/bad%20name/drop", adminSecret, nil)
		require.Equal(t, 400, r.Status)
		require.Contains(t, logs.String(), `"action":"drop destination queue","destination":"remote.test","dropped":2`)
		require.Contains(t, logs.String(), `"action":"retry destination","destination":"remote.test","found":true`)
	})
}

func TestAdminRemoteDeviceList(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		cfg := servertest.Config(b.NewURL(t))
		cfg.AdminSecret = adminSecret
		cfg.ServerName = "a.test"
		cfg.SigningKey = t.TempDir() + "/a.key"
		cfg.FederationDestinations = map[string]string{"remote.test": "http://127.0.0.1:1"}
		cfg.FederationBackoffMin, cfg.FederationBackoffMax = time.Hour, 2*time.Hour // no retry but the forced one
		logs := &lockedBuffer{}
		in := servertest.StartLogged(t, cfg, server.Options{}, slog.New(slog.NewJSONHandler(logs, nil)))
		const room = "/_todeviced/internal/v1/rooms/%21r%3Aa.test"
		require.Equal(t, 200, in.Do(t, "PUT", room+"/encryption", servertest.Secret, map[string]any{}).Status)
		r := in.Do(t, "PUT", room+"/members", servertest.Secret, map[string]any{"members": map[string]any{
			"@alice:a.test":     map[string]any{"membership": "join", "stream_ordering": 1},
			"@rita:remote.test": map[string]any{"membership": "join", "stream_ordering": 2},
		}})
		require.Equal(t, 200, r.Status, "%s", r.Body)

		get := func(user string) map[string]any {
			r := in.Do(t, "GET", "/_todeviced/admin/v1/users/"+user+"/device_list", adminSecret, nil)
			require.Equal(t, 200, r.Status, "%s", r.Body)
			return r.JSON(t)
		}
		servertest.WaitFor(t, "a failed resync", func() bool { return get("@rita:remote.test")["failures"] == 1.0 })
		rita := get("@rita:remote.test")
		require.Equal(t, true, rita["tracked"])
		require.Equal(t, true, rita["stale"])
		require.NotNil(t, rita["retry_ts"])
		require.Equal(t, []any{}, rita["devices"])
		require.Equal(t, false, get("@nobody:remote.test")["tracked"])

		failedBefore := counterValue(t, in, "todeviced_device_list_resyncs_total", "result", "failed")
		r = in.Do(t, "POST", "/_todeviced/admin/v1/users/@rita:remote.test/device_list/resync", adminSecret, nil)
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"found":true}`, string(r.Body))
		r = in.Do(t, "POST", "/_todeviced/admin/v1/users/@nobody:remote.test/device_list/resync", adminSecret, nil)
		require.JSONEq(t, `{"found":false}`, string(r.Body))
		r = in.Do(t, "GET", "/_todeviced/admin/v1/users/@alice:a.test/device_list", adminSecret, nil)
		require.Equal(t, 400, r.Status, "a local user's list is not a cache")
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		require.Contains(t, logs.String(), `"action":"force resync","user_id":"@rita:remote.test","found":true`)
		// The kicked worker tries again at once, its backoff forgotten: one
		// more failed resync is counted.
		servertest.WaitFor(t, "the forced resync's attempt", func() bool {
			return counterValue(t, in, "todeviced_device_list_resyncs_total", "result", "failed") >= failedBefore+1
		})
	})
}
