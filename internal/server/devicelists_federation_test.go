package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
)

const sharedRoom = "!e2e:a.test"

var streamOrdering atomic.Int64

// internal calls the node's internal API and requires a 200.
func (n *node) internal(method, path string, body any) []byte {
	n.t.Helper()
	status, resp := n.do(method, "/_todeviced/internal/v1"+path, secret, body)
	require.Equal(n.t, http.StatusOK, status, "%s %s: %s", method, path, resp)
	return resp
}

// encryptedRoom tells the node that room is encrypted and who is in it, as
// a homeserver would.
func (n *node) encryptedRoom(room string, members map[string]string) {
	n.t.Helper()
	n.internal(http.MethodPut, "/rooms/"+url.PathEscape(room)+"/encryption", map[string]any{})
	ms := map[string]any{}
	for u, m := range members {
		ms[u] = map[string]any{"membership": m, "stream_ordering": streamOrdering.Add(1)}
	}
	n.internal(http.MethodPut, "/rooms/"+url.PathEscape(room)+"/members", map[string]any{"members": ms})
}

func deviceKeys(user, device, curve string) map[string]any {
	return map[string]any{
		"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"curve25519:" + device: curve, "ed25519:" + device: "ed-" + curve},
	}
}

// putKeys creates or updates a device with keys through the internal API.
func (n *node) putKeys(user, device, curve string) {
	n.t.Helper()
	n.internal(http.MethodPut, "/users/"+url.PathEscape(user)+"/devices/"+url.PathEscape(device),
		map[string]any{"keys": deviceKeys(user, device, curve)})
}

type keysAnswer struct {
	Failures   map[string]any                       `json:"failures"`
	DeviceKeys map[string]map[string]map[string]any `json:"device_keys"`
	MasterKeys map[string]map[string]any            `json:"master_keys"`
}

// queryKeys is a client POST /keys/query for the users' devices.
func (n *node) queryKeys(token string, users ...string) keysAnswer {
	n.t.Helper()
	q := map[string][]string{}
	for _, u := range users {
		q[u] = []string{}
	}
	status, body := n.do(http.MethodPost, "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": q, "timeout": 5000})
	require.Equal(n.t, http.StatusOK, status, "keys/query: %s", body)
	var a keysAnswer
	require.NoError(n.t, json.Unmarshal(body, &a))
	return a
}

func (a keysAnswer) devices(user string) []string {
	var out []string
	for d := range a.DeviceKeys[user] {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// listSyncer follows one device's device_lists.
type listSyncer struct {
	n     *node
	token string
	since string
}

func (n *node) listSyncer(token string) *listSyncer {
	s := &listSyncer{n: n, token: token}
	s.sync(0)
	return s
}

func (s *listSyncer) sync(timeout time.Duration) []string {
	s.n.t.Helper()
	q := url.Values{"timeout": {fmt.Sprint(timeout.Milliseconds())}}
	if s.since != "" {
		q.Set("since", s.since)
	}
	status, body := s.n.do(http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), s.token, nil)
	require.Equal(s.n.t, http.StatusOK, status, "sync: %s", body)
	var r struct {
		NextBatch   string `json:"next_batch"`
		DeviceLists struct {
			Changed []string `json:"changed"`
		} `json:"device_lists"`
	}
	require.NoError(s.n.t, json.Unmarshal(body, &r))
	s.since = r.NextBatch
	return r.DeviceLists.Changed
}

// waitChanged long-polls until user shows up in device_lists.changed.
func (s *listSyncer) waitChanged(user string) {
	s.n.t.Helper()
	ctx := testCtx(s.n.t)
	for !slices.Contains(s.sync(5*time.Second), user) {
		if ctx.Err() != nil {
			s.n.t.Fatalf("%s never showed up in device_lists.changed", user)
		}
	}
}

// sharePair sets up an encrypted room with Alice (on A) and Bob (on B),
// told to both instances, and waits until B has fetched Alice's device
// list the first time.
func sharePair(t *testing.T, a, b *node) (aliceTok, bobTok string) {
	aliceTok = a.device(alice, "A0")
	bobTok = b.device(bob, "B1")
	members := map[string]string{alice: "join", bob: "join"}
	a.encryptedRoom(sharedRoom, members)
	b.encryptedRoom(sharedRoom, members)
	waitUntil(t, "B to fetch Alice's device list", func() bool {
		return b.metric("todeviced_device_list_resyncs_total", "result=ok") >= 1
	})
	return aliceTok, bobTok
}

// TestFederationDeviceListUpdate: a device change on A reaches a user on B
// who shares an encrypted room (device_lists.changed), and B's /keys/query
// then answers with the new device, from its cache.
func TestFederationDeviceListUpdate(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		_, bobTok := sharePair(t, a, b)
		lists := b.listSyncer(bobTok)

		a.putKeys(alice, "A1", "k1")
		lists.waitChanged(alice)
		got := b.queryKeys(bobTok, alice)
		require.Equal(t, []string{"A1"}, got.devices(alice))
		require.Equal(t, "k1", got.DeviceKeys[alice]["A1"]["keys"].(map[string]any)["curve25519:A1"])
		require.Empty(t, got.Failures)
		// The metric is counted once the update is stored, just after the
		// commit that woke the syncer.
		waitUntil(t, "the update to be counted", func() bool {
			return b.metric("todeviced_device_list_updates_received_total", "result=applied") >= 1
		})
		require.Equal(t, 1.0, b.metric("todeviced_device_list_updates_received_total", "result=applied"),
			"the update named the stream_id B fetched: applied, no resync")
		require.Zero(t, b.metric("todeviced_device_list_updates_received_total", "result=resync"))

		// Cross-signing keys travel as m.signing_key_update.
		master := map[string]any{"user_id": alice, "usage": []string{"master"}, "keys": map[string]string{"ed25519:M": "M"}}
		a.internal(http.MethodPut, "/users/"+url.PathEscape(alice)+"/cross_signing", map[string]any{"master_key": master})
		lists.waitChanged(alice)
		got = b.queryKeys(bobTok, alice)
		require.Equal(t, "M", got.MasterKeys[alice]["keys"].(map[string]any)["ed25519:M"])

		// Deleting a device is an update too.
		a.internal(http.MethodDelete, "/users/"+url.PathEscape(alice)+"/devices/A1", nil)
		lists.waitChanged(alice)
		require.Empty(t, b.queryKeys(bobTok, alice).devices(alice))
		a.putKeys(alice, "A2", "k2")
		lists.waitChanged(alice)

		// The answer comes from B's cache: it survives A going away.
		a.stop()
		got = b.queryKeys(bobTok, alice)
		require.Equal(t, []string{"A2"}, got.devices(alice))
		require.Empty(t, got.Failures, "a fresh cache needs no request")
		require.Equal(t, 1.0, b.metric("todeviced_device_list_resyncs_total", "result=ok"), "no gap, no resync")
		n, err := b.srv.Backend().Devices().RemoteUserCount(testCtx(t))
		require.NoError(t, err)
		require.Equal(t, 1, n, "B keeps one remote user's list")

		// A user of a server that does not answer is listed in failures.
		got = b.queryKeys(bobTok, "@nobody:a.test")
		require.Contains(t, got.Failures, "a.test")
	})
}

// TestFederationDeviceListGapResyncs: an update lost on the way (the
// destination's answer faked by a proxy, so A thinks it was delivered)
// shows as a prev_id gap on the next update; B resyncs Alice's list with
// GET /user/devices and converges.
func TestFederationDeviceListGapResyncs(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		var dropNext atomic.Bool
		var dropped atomic.Int32
		a, b := pair(t, db, func(cfg *server.Config) {
			if cfg.ServerName != "a.test" {
				return
			}
			target, err := url.Parse(cfg.FederationDestinations["b.test"])
			require.NoError(t, err)
			proxy := httputil.NewSingleHostReverseProxy(target)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") && dropNext.Load() {
					body, _ := io.ReadAll(r.Body)
					if bytes.Contains(body, []byte(`"m.device_list_update"`)) && dropNext.CompareAndSwap(true, false) {
						dropped.Add(1)
						w.Header().Set("Content-Type", "application/json")
						_, _ = w.Write([]byte(`{"pdus":{}}`)) // lost, but answered 200
						return
					}
					r.Body = io.NopCloser(bytes.NewReader(body))
				}
				proxy.ServeHTTP(w, r)
			}))
			t.Cleanup(srv.Close)
			cfg.FederationDestinations["b.test"] = srv.URL
		})
		_, bobTok := sharePair(t, a, b)
		lists := b.listSyncer(bobTok)

		dropNext.Store(true)
		a.putKeys(alice, "A1", "k1")
		waitUntil(t, "the first update to be lost", func() bool { return dropped.Load() == 1 })
		a.idleLists()
		a.putKeys(alice, "A2", "k2")

		lists.waitChanged(alice)
		waitUntil(t, "B to resync after the gap", func() bool {
			return b.metric("todeviced_device_list_resyncs_total", "result=ok") >= 2
		})
		waitUntil(t, "the gap to be counted", func() bool {
			return b.metric("todeviced_device_list_updates_received_total", "result=resync") >= 1
		})
		require.Equal(t, 1.0, b.metric("todeviced_device_list_updates_received_total", "result=resync"))
		waitUntil(t, "B's answer to show both devices", func() bool {
			return slices.Equal([]string{"A1", "A2"}, b.queryKeys(bobTok, alice).devices(alice))
		})
		got := b.queryKeys(bobTok, alice)
		require.Equal(t, "k1", got.DeviceKeys[alice]["A1"]["keys"].(map[string]any)["curve25519:A1"], "the lost device came with the resync")

		// Updates apply on top of the resync again.
		a.putKeys(alice, "A3", "k3")
		lists.waitChanged(alice)
		waitUntil(t, "the next update to apply", func() bool {
			return b.metric("todeviced_device_list_updates_received_total", "result=applied") >= 1
		})
		require.Equal(t, []string{"A1", "A2", "A3"}, b.queryKeys(bobTok, alice).devices(alice))
	})
}

// idleLists waits until the node has sent its device-list EDUs.
func (n *node) idleLists() {
	n.t.Helper()
	waitUntil(n.t, n.name+" to send its device-list EDUs", func() bool {
		bl, err := n.srv.Backend().Devices().OutboxBacklog(testCtx(n.t))
		require.NoError(n.t, err)
		txns, err := n.srv.Backend().Federation().TxnDestinations(testCtx(n.t))
		require.NoError(n.t, err)
		return bl.Pending == 0 && len(txns) == 0
	})
}

// TestFederationDeviceListDestinationDown: B is down while Alice's devices
// change; A keeps the update and retries, and once B is back it applies it.
func TestFederationDeviceListDestinationDown(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		_, bobTok := sharePair(t, a, b)
		lists := b.listSyncer(bobTok)

		b.stop()
		a.putKeys(alice, "A1", "k1")
		waitUntil(t, "A to fail at least once", func() bool {
			return a.metric("todeviced_federation_transactions_total", "result=retry") >= 1
		})
		b.restart()

		lists.waitChanged(alice)
		require.Equal(t, []string{"A1"}, b.queryKeys(bobTok, alice).devices(alice))
		a.idleLists()
		require.GreaterOrEqual(t, a.metricReaches("todeviced_federation_edus_sent_total", "type=m.device_list_update", 1), 1.0)
	})
}

// TestFederationDeviceListEDUsChecked: updates about users of another
// server than the origin are dropped, updates about users nobody local
// shares a room with are ignored, and both are answered 200; the served
// queries answer for local users only, to authenticated servers.
func TestFederationDeviceListEDUsChecked(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		a.putKeys(alice, "A1", "k1")
		a.internal(http.MethodPut, "/users/"+url.PathEscape(alice)+"/cross_signing", map[string]any{
			"master_key":       map[string]any{"user_id": alice, "usage": []string{"master"}, "keys": map[string]string{"ed25519:M": "M"}},
			"user_signing_key": map[string]any{"user_id": alice, "usage": []string{"user_signing"}, "keys": map[string]string{"ed25519:U": "U"}},
		})
		update := func(user string) map[string]any {
			return map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{
				"user_id": user, "device_id": "X", "stream_id": 5, "prev_id": []int{4}, "deleted": false,
			}}
		}
		b.internal(http.MethodPost, "/federation/edus", map[string]any{"origin": "a.test", "edus": []any{
			update("@carol:c.test"),
			update(alice),
			map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{"user_id": alice}},
			map[string]any{"edu_type": "m.signing_key_update", "content": map[string]any{
				"user_id": "@carol:c.test", "master_key": map[string]any{"user_id": "@carol:c.test", "keys": map[string]string{}},
			}},
		}})
		require.Equal(t, 3.0, b.metric("todeviced_device_list_updates_received_total", "result=rejected"),
			"another server's users and malformed updates are dropped")
		require.Equal(t, 1.0, b.metric("todeviced_device_list_updates_received_total", "result=ignored"),
			"nobody on B shares a room with Alice")
		n, err := b.srv.Backend().Devices().RemoteUserCount(testCtx(t))
		require.NoError(t, err)
		require.Zero(t, n)

		// The served queries, signed as B.
		c := signedClient(t, b.name, loadKey(t, b), a)
		var devs struct {
			UserID   string `json:"user_id"`
			StreamID int64  `json:"stream_id"`
			Devices  []struct {
				DeviceID string         `json:"device_id"`
				Keys     map[string]any `json:"keys"`
			} `json:"devices"`
			MasterKey map[string]any `json:"master_key"`
		}
		require.NoError(t, c.Do(testCtx(t), a.name, http.MethodGet, "/_matrix/federation/v1/user/devices/"+url.PathEscape(alice), nil, nil, &devs))
		require.Equal(t, alice, devs.UserID)
		require.Positive(t, devs.StreamID)
		require.Len(t, devs.Devices, 1)
		require.Equal(t, "A1", devs.Devices[0].DeviceID)
		require.NotNil(t, devs.MasterKey)
		var keys map[string]json.RawMessage
		require.NoError(t, c.Do(testCtx(t), a.name, http.MethodPost, "/_matrix/federation/v1/user/keys/query", nil,
			map[string]any{"device_keys": map[string][]string{alice: {}, "@x:c.test": {}}}, &keys))
		require.Contains(t, string(keys["device_keys"]), `"A1"`)
		require.Contains(t, string(keys["master_keys"]), `"ed25519:M"`)
		require.NotContains(t, keys, "user_signing_keys", "never shown to another server")
		require.NotContains(t, string(keys["device_keys"]), "@x:c.test")

		err = c.Do(testCtx(t), a.name, http.MethodGet, "/_matrix/federation/v1/user/devices/"+url.PathEscape(bob), nil, nil, &devs)
		require.ErrorContains(t, err, "400", "only local users")
		status, _ := a.do(http.MethodGet, "/_matrix/federation/v1/user/devices/"+url.PathEscape(alice), "", nil)
		require.Equal(t, http.StatusUnauthorized, status, "X-Matrix is required")
		body := a.internal(http.MethodGet, "/federation/user/devices/"+url.PathEscape(alice), nil)
		require.Contains(t, string(body), `"A1"`, "the internal equivalent for a homeserver")
	})
}

// TestFederationDeviceListFeed: in feed mode the homeserver pulls the
// device-list EDUs with the to-device ones, in one batch, and acknowledges
// them together.
func TestFederationDeviceListFeed(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, func(cfg *server.Config) { cfg.FederationOutbox = server.FederationOutboxFeed })
		aliceTok, bobTok := sharePair(t, a, b)
		lists := b.listSyncer(bobTok)
		b2 := b.syncer(b.device(bob, "B2")) // its own device: the list syncer acknowledges B1's messages
		a.putKeys(alice, "A1", "k1")
		a.send(aliceTok, "t1", map[string]map[string]any{bob: {"B2": map[string]any{"n": 1}}})

		const feed = "/_todeviced/internal/v1/federation/outbox"
		status, body := a.do(http.MethodGet, feed+"?destination=b.test&limit=1", secret, nil)
		require.Equal(t, http.StatusOK, status)
		var p feedPull
		require.NoError(t, json.Unmarshal(body, &p))
		require.Len(t, p.EDUs, 1)
		require.Contains(t, string(p.EDUs[0]), "m.device_list_update", "a small pull still carries device-list updates first")
		status, body = a.do(http.MethodGet, feed+"?destination=b.test", secret, nil)
		require.Equal(t, http.StatusOK, status)
		require.NoError(t, json.Unmarshal(body, &p))
		require.Len(t, p.EDUs, 2)
		b.internal(http.MethodPost, "/federation/edus", map[string]any{"origin": a.name, "edus": p.EDUs})
		status, body = a.do(http.MethodPost, feed+"/ack", secret, map[string]string{"batch": p.Batch})
		require.Equal(t, http.StatusOK, status, "%s", body)
		require.JSONEq(t, `{"deleted":2}`, string(body))
		require.Equal(t, 1.0, a.metric("todeviced_federation_edus_sent_total", "type=m.device_list_update"))

		lists.waitChanged(alice)
		require.Equal(t, []int{1}, ns(b2.collect(1)))
		require.Equal(t, []string{"A1"}, b.queryKeys(bobTok, alice).devices(alice))
	})
}

// TestFederationDeviceNamesHidden: display names stay on their server by
// default (as Synapse's allow_device_name_lookup_over_federation: false):
// neither the device-list EDUs nor the answers of /user/devices and
// /user/keys/query carry them. --federation-device-names (here on b.test)
// shows them; local clients always see their own server's names.
func TestFederationDeviceNamesHidden(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, func(cfg *server.Config) { cfg.FederationDeviceNames = cfg.ServerName == "b.test" })
		named := func(n *node, user, device, name, curve string) {
			n.internal(http.MethodPut, "/users/"+url.PathEscape(user)+"/devices/"+url.PathEscape(device),
				map[string]any{"display_name": name, "keys": deviceKeys(user, device, curve)})
		}
		nameOf := func(a keysAnswer, user, device string) any {
			unsigned, _ := a.DeviceKeys[user][device]["unsigned"].(map[string]any)
			return unsigned["device_display_name"]
		}
		aliceTok, bobTok := a.device(alice, "A0"), b.device(bob, "B0")
		named(a, alice, "A1", "Alice's phone", "k1")
		named(b, bob, "B1", "Bob's laptop", "k1")
		members := map[string]string{alice: "join", bob: "join"}
		a.encryptedRoom(sharedRoom, members)
		b.encryptedRoom(sharedRoom, members)
		waitUntil(t, "both to fetch the other's device list", func() bool {
			return a.metric("todeviced_device_list_resyncs_total", "result=ok") >= 1 &&
				b.metric("todeviced_device_list_resyncs_total", "result=ok") >= 1
		})

		// Through GET /user/devices (the resync).
		got := b.queryKeys(bobTok, alice)
		require.Equal(t, []string{"A1"}, got.devices(alice))
		require.Nil(t, nameOf(got, alice, "A1"), "a.test hides its names")
		require.Equal(t, "Bob's laptop", nameOf(a.queryKeys(aliceTok, bob), bob, "B1"), "b.test shows its names")
		require.Equal(t, "Alice's phone", nameOf(a.queryKeys(aliceTok, alice), alice, "A1"), "local clients see local names")

		// Through m.device_list_update.
		lists := b.listSyncer(bobTok)
		named(a, alice, "A2", "Alice's tablet", "k2")
		lists.waitChanged(alice)
		got = b.queryKeys(bobTok, alice)
		require.Equal(t, []string{"A1", "A2"}, got.devices(alice))
		require.Nil(t, nameOf(got, alice, "A2"))
		named(b, bob, "B2", "Bob's phone", "k2")
		waitUntil(t, "a.test to apply Bob's update", func() bool {
			return slices.Contains(a.queryKeys(aliceTok, bob).devices(bob), "B2")
		})
		require.Equal(t, "Bob's phone", nameOf(a.queryKeys(aliceTok, bob), bob, "B2"))

		// Asked directly, signed as the other server.
		for _, c := range []struct {
			from, to *node
			user     string
			name     string // "" hidden
		}{{b, a, alice, ""}, {a, b, bob, "Bob's laptop"}} {
			cl := signedClient(t, c.from.name, loadKey(t, c.from), c.to)
			var devs json.RawMessage
			require.NoError(t, cl.Do(testCtx(t), c.to.name, http.MethodGet, "/_matrix/federation/v1/user/devices/"+url.PathEscape(c.user), nil, nil, &devs))
			var keys json.RawMessage
			require.NoError(t, cl.Do(testCtx(t), c.to.name, http.MethodPost, "/_matrix/federation/v1/user/keys/query", nil,
				map[string]any{"device_keys": map[string][]string{c.user: {}}}, &keys))
			internalDevs := c.to.internal(http.MethodGet, "/federation/user/devices/"+url.PathEscape(c.user), nil)
			for what, body := range map[string][]byte{"/user/devices": devs, "/user/keys/query": keys, "internal /user/devices": internalDevs} {
				if c.name == "" {
					require.NotContains(t, string(body), "display_name", "%s of %s", what, c.to.name)
					require.NotContains(t, string(body), "Alice's", "%s of %s", what, c.to.name)
				} else {
					require.Contains(t, string(body), c.name, "%s of %s", what, c.to.name)
				}
			}
		}
	})
}

// TestFederationUnknownSendingDeviceResyncs: a to-device message from a
// remote user that names a sending device B's cache of the user's list
// lacks (here A's update about it was lost on the way) makes B resync the list at
// once, as Synapse does; a message naming a known device does not.
func TestFederationUnknownSendingDeviceResyncs(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, func(cfg *server.Config) {
			if cfg.ServerName != "a.test" {
				return
			}
			// A's transactions to B are lost (answered 200 unseen); its
			// key fetches get through.
			target, err := url.Parse(cfg.FederationDestinations["b.test"])
			require.NoError(t, err)
			proxy := httputil.NewSingleHostReverseProxy(target)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
					_, _ = io.Copy(io.Discard, r.Body)
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(`{"pdus":{}}`))
					return
				}
				proxy.ServeHTTP(w, r)
			}))
			t.Cleanup(srv.Close)
			cfg.FederationDestinations["b.test"] = srv.URL
		})
		a.device(alice, "A0")
		a.putKeys(alice, "A0", "k0")
		bobTok := b.device(bob, "B1")
		members := map[string]string{alice: "join", bob: "join"}
		a.encryptedRoom(sharedRoom, members)
		b.encryptedRoom(sharedRoom, members)
		waitUntil(t, "B to fetch Alice's device list", func() bool {
			return b.metric("todeviced_device_list_resyncs_total", "result=ok") >= 1
		})
		a.putKeys(alice, "A1", "k1")
		a.idleLists() // the update about A1 is lost on the way
		require.Equal(t, []string{"A0"}, b.queryKeys(bobTok, alice).devices(alice))

		keyRequest := func(id, device string) map[string]any {
			return map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
				"sender": alice, "type": "m.room_key_request", "message_id": id,
				"messages": map[string]any{bob: map[string]any{"*": map[string]any{
					"action": "request", "request_id": id, "requesting_device_id": device,
				}}},
			}}
		}
		fresh := func() bool {
			l, err := b.srv.Backend().Devices().RemoteDeviceLists(testCtx(t), []string{alice})
			require.NoError(t, err)
			_, ok := l[alice]
			return ok
		}

		// A known sending device leaves the cache alone (the check runs
		// before the EDU is answered).
		b.internal(http.MethodPost, "/federation/edus", map[string]any{"origin": a.name, "edus": []any{keyRequest("m1", "A0")}})
		require.True(t, fresh(), "A0 is in the cache: no resync")

		// An unknown one makes B fetch the list again, and A1 shows up.
		b.internal(http.MethodPost, "/federation/edus", map[string]any{"origin": a.name, "edus": []any{keyRequest("m2", "A1")}})
		waitUntil(t, "B to resync Alice's list", func() bool {
			return b.metric("todeviced_device_list_resyncs_total", "result=ok") >= 2
		})
		require.Equal(t, []string{"A0", "A1"}, b.queryKeys(bobTok, alice).devices(alice))
		require.Equal(t, 0.0, b.metric("todeviced_device_list_updates_received_total", "result=applied"),
			"the resync, not an update, brought A1")
		require.Len(t, b.syncer(bobTok).collect(2), 2, "both requests were delivered")
	})
}
