package httpapi_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/mxerr"
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
				require.LessOrEqual(t, len(msg), mxerr.MaxMessage+len("…"), "message: %.300s", msg)
				require.Less(t, len(r.Body), 1024, "the answer echoes a short prefix only")
			})
		}
	})
}
