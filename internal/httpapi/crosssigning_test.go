package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/storage/storetest"
)

const (
	deviceSigningPath = "/_matrix/client/v3/keys/device_signing/upload"
	signaturesPath    = "/_matrix/client/v3/keys/signatures/upload"
)

// putDeviceWithKeys creates a device with token and keys.
func putDeviceWithKeys(t *testing.T, in *servertest.Instance, user, device, token string, keys json.RawMessage) {
	t.Helper()
	r := in.Do(t, http.MethodPut, "/_todeviced/internal/v1/users/"+url.PathEscape(user)+"/devices/"+device, servertest.Secret,
		map[string]any{"access_token": token, "keys": keys})
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
}

// signedKeys is a body of device_signing/upload: master, and self- and
// user-signing keys signed by it.
func signedKeys(user string, m, s, u storetest.Signer) map[string]json.RawMessage {
	return map[string]json.RawMessage{
		"master_key":       m.CrossSigningKey(user, "master"),
		"self_signing_key": m.Sign(s.CrossSigningKey(user, "self_signing"), user, m.KeyID()),
		"user_signing_key": m.Sign(u.CrossSigningKey(user, "user_signing"), user, m.KeyID()),
	}
}

func sigOf(t *testing.T, raw json.RawMessage, user, keyID string) string {
	t.Helper()
	var obj struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	require.NoError(t, json.Unmarshal(raw, &obj))
	return obj.Signatures[user][keyID]
}

// TestCrossSigningUpload: keys and signatures uploaded through the client
// API, validated, merged into /keys/query; replacing keys standalone is the
// spec's 401 until the internal API allows it.
func TestCrossSigningUpload(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		dev, am, as, au := storetest.NewSigner(1), storetest.NewSigner(2), storetest.NewSigner(3), storetest.NewSigner(4)
		bm, bu, evil := storetest.NewSigner(5), storetest.NewSigner(6), storetest.NewSigner(7)
		putDeviceWithKeys(t, in, alice, "A1", "tok-alice", dev.DeviceKeys(alice, "A1"))
		in.PutDevice(t, bob, "B1", "tok-bob")

		// Refusals: clear 400s, nothing stored.
		bad := []struct {
			name string
			body any
			code string
		}{
			{"another user's key", signedKeys(bob, am, as, au), "M_INVALID_PARAM"},
			{"wrong usage", map[string]json.RawMessage{"master_key": am.CrossSigningKey(alice, "self_signing")}, "M_INVALID_PARAM"},
			{"two keys", map[string]json.RawMessage{"master_key": json.RawMessage(
				`{"user_id":"@alice:localhost","usage":["master"],"keys":{"ed25519:` + am.Pub + `":"` + am.Pub + `","ed25519:` + as.Pub + `":"` + as.Pub + `"}}`)}, "M_INVALID_PARAM"},
			{"key id not its key", map[string]json.RawMessage{"master_key": json.RawMessage(
				`{"user_id":"@alice:localhost","usage":["master"],"keys":{"ed25519:X":"` + am.Pub + `"}}`)}, "M_INVALID_PARAM"},
			{"not a key", map[string]json.RawMessage{"master_key": json.RawMessage(
				`{"user_id":"@alice:localhost","usage":["master"],"keys":{"ed25519:abc":"abc"}}`)}, "M_INVALID_PARAM"},
			{"self-signing key not signed by the master", map[string]json.RawMessage{
				"master_key":       am.CrossSigningKey(alice, "master"),
				"self_signing_key": evil.Sign(as.CrossSigningKey(alice, "self_signing"), alice, am.KeyID()),
			}, "M_INVALID_SIGNATURE"},
			{"self-signing key without a master", map[string]json.RawMessage{
				"self_signing_key": am.Sign(as.CrossSigningKey(alice, "self_signing"), alice, am.KeyID()),
			}, "M_MISSING_PARAM"},
			{"no key", map[string]any{}, "M_MISSING_PARAM"},
			{"a list", []int{1}, "M_BAD_JSON"},
		}
		for _, c := range bad {
			r := in.Do(t, http.MethodPost, deviceSigningPath, "tok-alice", c.body)
			require.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", c.name, r.Body)
			require.Equal(t, c.code, r.Errcode(t), "%s: %s", c.name, r.Body)
		}

		// The first keys need no user-interactive auth, the same keys again
		// neither.
		r := in.Do(t, http.MethodPost, deviceSigningPath, "tok-alice", signedKeys(alice, am, as, au))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		r = in.Do(t, http.MethodPost, "/_matrix/client/r0/keys/device_signing/upload", "tok-alice", signedKeys(alice, am, as, au))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)

		// Replacing them is the spec's 401, auth or not.
		other := storetest.NewSigner(8)
		for _, auth := range []any{nil, map[string]any{"type": "m.login.password", "password": "x", "session": "s"}} {
			body := map[string]any{"master_key": other.CrossSigningKey(alice, "master"), "auth": auth}
			r = in.Do(t, http.MethodPost, deviceSigningPath, "tok-alice", body)
			require.Equal(t, http.StatusUnauthorized, r.Status, "%s", r.Body)
			var uia struct {
				Flows []struct {
					Stages []string `json:"stages"`
				} `json:"flows"`
				Params  map[string]any `json:"params"`
				Session string         `json:"session"`
			}
			require.NoError(t, json.Unmarshal(r.Body, &uia))
			require.NotEmpty(t, uia.Flows)
			require.NotEmpty(t, uia.Flows[0].Stages)
			require.NotNil(t, uia.Params)
			require.NotEmpty(t, uia.Session)
		}

		// Signatures: a device by the self-signing key, the master key by
		// the device; failures for the bad ones.
		r = in.Do(t, http.MethodPost, signaturesPath, "tok-alice", map[string]map[string]json.RawMessage{
			alice: {
				"A1":     as.Sign(dev.DeviceKeys(alice, "A1"), alice, as.KeyID()),
				am.Pub:   dev.Sign(am.CrossSigningKey(alice, "master"), alice, "ed25519:A1"),
				"NOPE":   as.Sign(dev.DeviceKeys(alice, "NOPE"), alice, as.KeyID()),
				"forged": json.RawMessage(`{"x":1}`),
			},
		})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var res struct {
			Failures map[string]map[string]struct {
				Errcode string `json:"errcode"`
				Error   string `json:"error"`
			} `json:"failures"`
		}
		require.NoError(t, json.Unmarshal(r.Body, &res))
		require.Len(t, res.Failures[alice], 2, "%s", r.Body)
		require.Equal(t, "M_NOT_FOUND", res.Failures[alice]["NOPE"].Errcode)
		require.Equal(t, "M_NOT_FOUND", res.Failures[alice]["forged"].Errcode)

		r = in.Do(t, http.MethodPost, signaturesPath, "tok-alice", map[string]map[string]json.RawMessage{
			alice: {"A1": evil.Sign(dev.DeviceKeys(alice, "A1"), alice, as.KeyID())},
		})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `"M_INVALID_SIGNATURE"`, string(mustField(t, r.Body, "failures", alice, "A1", "errcode")))

		// Bob, through the internal API (a homeserver keeping the client
		// endpoint), signs Alice's master key with his user-signing key.
		r = in.Do(t, http.MethodPost, deviceSigningPath, "tok-bob", map[string]json.RawMessage{
			"master_key":       bm.CrossSigningKey(bob, "master"),
			"user_signing_key": bm.Sign(bu.CrossSigningKey(bob, "user_signing"), bob, bm.KeyID()),
		})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		r = in.Do(t, http.MethodPost, "/_todeviced/internal/v1/users/"+url.PathEscape(bob)+"/signatures", servertest.Secret,
			map[string]map[string]json.RawMessage{alice: {am.Pub: bu.Sign(am.CrossSigningKey(alice, "master"), bob, bu.KeyID())}})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"failures":{}}`, string(r.Body))

		query := func(token string) (master, device json.RawMessage) {
			r := in.Do(t, http.MethodPost, "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{alice: []string{}}})
			require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
			return mustField(t, r.Body, "master_keys", alice), mustField(t, r.Body, "device_keys", alice, "A1")
		}
		master, device := query("tok-bob")
		require.NotEmpty(t, sigOf(t, device, alice, as.KeyID()), "the self-signing key's signature")
		require.NotEmpty(t, sigOf(t, master, alice, "ed25519:A1"), "the device's signature of the master key")
		require.NotEmpty(t, sigOf(t, master, bob, bu.KeyID()), "the signer sees his signature")
		master, _ = query("tok-alice")
		require.Empty(t, sigOf(t, master, bob, bu.KeyID()), "nobody else does")

		// The internal API allows the replacement; then it goes through.
		r = in.Do(t, http.MethodPost, "/_todeviced/internal/v1/users/"+url.PathEscape(alice)+"/cross_signing/replace_allowed", servertest.Secret, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.Contains(t, r.JSON(t), "updatable_without_uia_before_ms")
		r = in.Do(t, http.MethodPost, deviceSigningPath, "tok-alice", signedKeys(alice, other, as, au))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		master, _ = query("tok-bob")
		require.JSONEq(t, string(other.CrossSigningKey(alice, "master")), string(master))
	})
}
