package server_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/servertest"
)

type claimAnswer struct {
	Failures    map[string]any                                   `json:"failures"`
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
}

func (n *node) claim(token string, q map[string]map[string]string) claimAnswer {
	n.t.Helper()
	status, body := n.do(http.MethodPost, "/_matrix/client/v3/keys/claim", token, map[string]any{"one_time_keys": q, "timeout": 2000})
	require.Equal(n.t, http.StatusOK, status, "%s", body)
	var a claimAnswer
	require.NoError(n.t, json.Unmarshal(body, &a))
	return a
}

// TestFederationKeysClaim: a client on A claims one-time keys of a device
// on B through POST /_matrix/federation/v1/user/keys/claim; each key once,
// then the fallback key; B unreachable is a failure.
func TestFederationKeysClaim(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		aliceTok := a.device(alice, "A1")
		bobTok := b.device(bob, "B1")
		b1 := servertest.NewE2EDevice(bob, "B1")
		status, body := b.do(http.MethodPost, "/_matrix/client/v3/keys/upload", bobTok, map[string]any{
			"device_keys": b1.DeviceKeys(), "one_time_keys": b1.OneTimeKeys(0, 2), "fallback_keys": b1.FallbackKey("FB"),
		})
		require.Equal(t, http.StatusOK, status, "%s", body)

		q := map[string]map[string]string{bob: {"B1": "signed_curve25519", "NOPE": "signed_curve25519"}}
		var got []string
		for range 3 {
			ans := a.claim(aliceTok, q)
			require.Empty(t, ans.Failures)
			require.Len(t, ans.OneTimeKeys[bob]["B1"], 1)
			require.NotContains(t, ans.OneTimeKeys[bob], "NOPE")
			for id, k := range ans.OneTimeKeys[bob]["B1"] {
				got = append(got, id)
				var obj map[string]any
				require.NoError(t, json.Unmarshal(k, &obj))
				require.Contains(t, obj, "signatures", "the key as uploaded, signed")
			}
		}
		require.Equal(t, []string{"signed_curve25519:AAAA0000", "signed_curve25519:AAAA0001", "signed_curve25519:FB"}, got)
		require.Equal(t, 2.0, b.metric("todeviced_one_time_keys_claimed_total"))
		require.Equal(t, 1.0, b.metric("todeviced_fallback_keys_served_total"))

		// The internal twin of the federation claim, for a homeserver that
		// serves federation itself: local users only.
		status, body = b.do(http.MethodPost, "/_matrix/client/v3/keys/upload", bobTok, map[string]any{"one_time_keys": b1.OneTimeKeys(5, 1)})
		require.Equal(t, http.StatusOK, status, "%s", body)
		var fed struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		require.NoError(t, json.Unmarshal(b.internal(http.MethodPost, "/federation/user/keys/claim",
			map[string]any{"one_time_keys": map[string]any{bob: map[string]string{"B1": "signed_curve25519"}, alice: map[string]string{"A1": "signed_curve25519"}}}), &fed))
		require.Contains(t, fed.OneTimeKeys[bob]["B1"], "signed_curve25519:AAAA0005")
		require.NotContains(t, fed.OneTimeKeys, alice, "another server's user is not answered for")

		// B's federation route wants X-Matrix.
		status, _ = b.do(http.MethodPost, "/_matrix/federation/v1/user/keys/claim", "", map[string]any{"one_time_keys": q})
		require.Equal(t, http.StatusUnauthorized, status)

		b.stop()
		ans := a.claim(aliceTok, q)
		require.Contains(t, ans.Failures, "b.test", "an unreachable server is a failure")
		require.Empty(t, ans.OneTimeKeys)
	})
}
