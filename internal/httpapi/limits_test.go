package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/servertest"
)

// The internal secret is taken only from the Authorization header: as a
// query parameter it would be written to every proxy's access log. Client
// access tokens may still come as access_token (the spec allows it).
func TestInternalSecretOnlyInAuthorizationHeader(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		path := "/_todeviced/internal/v1/sync?user_id=" + url.QueryEscape(bob) + "&device_id=B1"

		r := in.Do(t, http.MethodGet, path+"&access_token="+url.QueryEscape(servertest.Secret), "", nil)
		require.Equal(t, http.StatusUnauthorized, r.Status, "%s", r.Body)
		require.Equal(t, "M_MISSING_TOKEN", r.Errcode(t))
		require.Contains(t, r.JSON(t)["error"], "Authorization header")

		r = in.Do(t, http.MethodPut, "/_todeviced/internal/v1/users/"+url.PathEscape(bob)+"/devices/B2?access_token="+url.QueryEscape(servertest.Secret),
			"", map[string]any{"access_token": "tok-b2"})
		require.Equal(t, http.StatusUnauthorized, r.Status, "a write through the query parameter is refused too: %s", r.Body)

		r = in.Do(t, http.MethodGet, path, servertest.Secret, nil)
		require.Equal(t, http.StatusOK, r.Status, "the header works: %s", r.Body)

		r = in.Do(t, http.MethodGet, "/_matrix/client/v3/sync?access_token=tok-bob", "", nil)
		require.Equal(t, http.StatusOK, r.Status, "a client token may come as access_token: %s", r.Body)
	})
}

// Error messages quote at most a short prefix of client input: a 100 KB
// garbage since (or path, or body value) is never echoed whole.
func TestErrorsQuoteAShortPrefix(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		garbage := "GARBAGE" + strings.Repeat("x", 100<<10)
		q := url.QueryEscape(garbage)
		internalSync := "/_todeviced/internal/v1/sync?user_id=" + url.QueryEscape(bob) + "&device_id=B1"
		for _, c := range []struct {
			name, method, path, token string
			body                      any
		}{
			{"client since", http.MethodGet, "/_matrix/client/v3/sync?since=" + q, "tok-bob", nil},
			{"client since with a separator", http.MethodGet, "/_matrix/client/v3/sync?since=" + q + "_1", "tok-bob", nil},
			{"internal to_device_since", http.MethodGet, internalSync + "&to_device_since=" + q, servertest.Secret, nil},
			{"internal device_lists_since", http.MethodGet, internalSync + "&device_lists_since=" + q, servertest.Secret, nil},
			{"internal membership", http.MethodPut, "/_todeviced/internal/v1/rooms/" + url.PathEscape("!r:localhost") + "/members/" + url.PathEscape(bob),
				servertest.Secret, map[string]any{"membership": garbage, "stream_ordering": 1}},
			{"internal room id", http.MethodPut, "/_todeviced/internal/v1/rooms/" + url.PathEscape(garbage) + "/encryption", servertest.Secret, map[string]any{}},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := in.Do(t, c.method, c.path, c.token, c.body)
				require.Equal(t, http.StatusBadRequest, r.Status, "%.200s", r.Body)
				msg, _ := r.JSON(t)["error"].(string)
				require.Contains(t, msg, "GARBAGE", "the message still says what it refused")
				require.LessOrEqual(t, len(msg), matrix.MaxMessage+len("…"), "message: %.300s", msg)
				require.Less(t, len(r.Body), 1024, "the answer echoes a short prefix only")
			})
		}
	})
}

// A since above every position the server issued (observation: a forged
// "<epoch>_<nid>_0_99999999_0") is refused with 400 M_INVALID_PARAM and
// deletes nothing, on the client /sync and the internal /sync alike; the
// messages stay, and sends after it are delivered.
func TestSinceNeverIssuedIsRefused(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		for i := range 2 {
			in.Send(t, "tok-alice", "m.test", fmt.Sprint("t", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		first := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{0, 1}, ns(first.ToDevice.Events))
		// EPOCH_NID_LO_HI_DL: keep everything but the inbox position.
		parts := strings.Split(first.NextBatch, "_")
		require.Len(t, parts, 5)
		internalSync := func(since string) servertest.Response {
			return in.Do(t, http.MethodGet, "/_todeviced/internal/v1/sync?user_id="+url.QueryEscape(bob)+"&device_id=B1&to_device_since="+url.QueryEscape(since), servertest.Secret, nil)
		}
		for _, forged := range [][2]string{{parts[2], "99999999"}, {"99999999", "99999999"}} {
			td := strings.Join([]string{parts[0], parts[1], forged[0], forged[1]}, "_")
			r := in.RawSync(context.Background(), t, "tok-bob", td+"_"+parts[4], 0)
			require.Equal(t, http.StatusBadRequest, r.Status, "client sync: %s", r.Body)
			require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
			r = internalSync(td)
			require.Equal(t, http.StatusBadRequest, r.Status, "internal sync: %s", r.Body)
			require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		}
		again := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{0, 1}, ns(again.ToDevice.Events), "nothing was deleted")

		in.Send(t, "tok-alice", "m.test", "t2", map[string]map[string]any{bob: {"B1": map[string]any{"n": 2}}})
		next := in.Sync(t, "tok-bob", again.NextBatch, 0)
		require.Equal(t, []int{2}, ns(next.ToDevice.Events), "a later send is not hidden")
		r := internalSync(strings.TrimSuffix(next.NextBatch, "_"+parts[4]))
		require.Equal(t, http.StatusOK, r.Status, "an issued position works on the internal API: %s", r.Body)
	})
}

// The internal API refuses to give one access token to a second device,
// instead of silently taking it from the first (which would log that device
// out behind the homeserver's back).
func TestOneTokenOneDevice(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-shared")
		putDevice := func(user, device, token string) servertest.Response {
			return in.Do(t, http.MethodPut, "/_todeviced/internal/v1/users/"+url.PathEscape(user)+"/devices/"+device, servertest.Secret,
				map[string]any{"access_token": token})
		}
		r := putDevice(alice, "A1", "tok-shared")
		require.Equal(t, http.StatusConflict, r.Status, "%s", r.Body)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		require.Contains(t, r.JSON(t)["error"], "another device")
		r = putDevice(bob, "B2", "tok-shared")
		require.Equal(t, http.StatusConflict, r.Status, "another device of the same user too: %s", r.Body)

		r = in.Do(t, http.MethodGet, "/_matrix/client/v3/sync", "tok-shared", nil)
		require.Equal(t, http.StatusOK, r.Status, "the first device keeps its token: %s", r.Body)
		in.Send(t, "tok-shared", "m.test", "t1", map[string]map[string]any{bob: {"B1": map[string]any{"n": 1}}})
		got := in.Sync(t, "tok-shared", "", 0)
		require.Equal(t, []int{1}, ns(got.ToDevice.Events), "and is still bob's B1")

		require.Equal(t, http.StatusOK, putDevice(bob, "B1", "tok-shared").Status, "giving a device its own token again is fine")
		require.Equal(t, http.StatusOK, putDevice(bob, "B1", "tok-new").Status)
		require.Equal(t, http.StatusOK, putDevice(alice, "A1", "tok-shared").Status, "a released token may be given again")
	})
}

// A user id naming this server in another ASCII case ("@bob:LOCALHOST" on
// localhost) is refused with 400 M_INVALID_PARAM at every entry point that
// sorts local users from remote ones, never treated as another server's
// user (which would send it over federation to ourselves).
func TestServerNameInAnotherCaseIsRefused(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		const upper = "@bob:LOCALHOST"
		room := url.PathEscape("!room:localhost")
		for _, c := range []struct {
			name, method, path, token string
			body                      any
		}{
			{"sendToDevice", http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/t1", "tok-alice",
				map[string]any{"messages": map[string]any{upper: map[string]any{"B1": map[string]any{}}}}},
			{"keys/query", http.MethodPost, "/_matrix/client/v3/keys/query", "tok-alice",
				map[string]any{"device_keys": map[string]any{upper: []string{}}}},
			{"internal device", http.MethodPut, "/_todeviced/internal/v1/users/" + url.PathEscape(upper) + "/devices/B1", servertest.Secret,
				map[string]any{"access_token": "tok-upper"}},
			{"internal cross-signing", http.MethodPut, "/_todeviced/internal/v1/users/" + url.PathEscape(upper) + "/cross_signing", servertest.Secret,
				map[string]any{}},
			{"internal membership", http.MethodPut, "/_todeviced/internal/v1/rooms/" + room + "/members/" + url.PathEscape(upper), servertest.Secret,
				map[string]any{"membership": "join", "stream_ordering": 1}},
			{"internal bulk membership", http.MethodPut, "/_todeviced/internal/v1/rooms/" + room + "/members", servertest.Secret,
				map[string]any{"members": map[string]any{upper: map[string]any{"membership": "join", "stream_ordering": 1}}}},
			{"internal sync", http.MethodGet, "/_todeviced/internal/v1/sync?device_id=B1&user_id=" + url.QueryEscape(upper), servertest.Secret, nil},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := in.Do(t, c.method, c.path, c.token, c.body)
				require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
				require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
				require.Contains(t, r.JSON(t)["error"], "localhost", "the message names the canonical server name")
			})
		}
		// The canonical spelling works.
		r := in.Do(t, http.MethodPut, "/_todeviced/internal/v1/rooms/"+room+"/members/"+url.PathEscape(bob), servertest.Secret,
			map[string]any{"membership": "join", "stream_ordering": 1})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	})
}
