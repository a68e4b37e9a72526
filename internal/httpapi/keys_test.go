package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/servertest"
)

const (
	uploadPath = "/_matrix/client/v3/keys/upload"
	claimPath  = "/_matrix/client/v3/keys/claim"
	curve      = "signed_curve25519"
)

type syncCounts struct {
	NextBatch string         `json:"next_batch"`
	Counts    map[string]int `json:"device_one_time_keys_count"`
	Fallback  []string       `json:"device_unused_fallback_key_types"`
}

func syncKeys(t *testing.T, in *servertest.Instance, token, since string, timeout time.Duration) syncCounts {
	t.Helper()
	r := in.RawSync(context.Background(), t, token, since, timeout)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var s syncCounts
	require.NoError(t, json.Unmarshal(r.Body, &s))
	require.Contains(t, string(r.Body), `"device_unused_fallback_key_types":`, "a field the spec requires")
	return s
}

func claimOne(t *testing.T, in *servertest.Instance, token, userID, deviceID string) map[string]any {
	t.Helper()
	r := in.Do(t, http.MethodPost, claimPath, token, map[string]any{"one_time_keys": map[string]any{userID: map[string]any{deviceID: curve}}})
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	body := r.JSON(t)
	require.Equal(t, map[string]any{}, body["failures"])
	users, _ := body["one_time_keys"].(map[string]any)
	devs, _ := users[userID].(map[string]any)
	keys, _ := devs[deviceID].(map[string]any)
	return keys
}

func TestKeysUploadClaimAndSyncCounts(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		a1 := servertest.NewE2EDevice(alice, "A1")

		s0 := syncKeys(t, in, "tok-alice", "", 0)
		require.Equal(t, map[string]int{curve: 0}, s0.Counts)
		require.Empty(t, s0.Fallback)

		r := in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{
			"device_keys": a1.DeviceKeys(), "one_time_keys": a1.OneTimeKeys(0, 2), "fallback_keys": a1.FallbackKey("FB1"),
		})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"one_time_key_counts":{"signed_curve25519":2}}`, string(r.Body))

		q := in.Do(t, http.MethodPost, "/_matrix/client/v3/keys/query", "tok-bob", map[string]any{"device_keys": map[string]any{alice: []string{}}})
		require.Equal(t, http.StatusOK, q.Status)
		require.Equal(t, a1.KeyID(), func() string {
			keys := q.JSON(t)["device_keys"].(map[string]any)[alice].(map[string]any)["A1"].(map[string]any)["keys"].(map[string]any)
			for k := range keys {
				if k == a1.KeyID() {
					return k
				}
			}
			return ""
		}(), "the uploaded device keys are what /keys/query answers")

		// The same upload again changes nothing.
		r = in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": a1.OneTimeKeys(0, 2)})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"one_time_key_counts":{"signed_curve25519":2}}`, string(r.Body))

		s1 := syncKeys(t, in, "tok-alice", s0.NextBatch, 0)
		require.Equal(t, map[string]int{curve: 2}, s1.Counts)
		require.Equal(t, []string{curve}, s1.Fallback)

		k := claimOne(t, in, "tok-bob", alice, "A1")
		require.Contains(t, k, curve+":AAAA0000")
		require.Contains(t, claimOne(t, in, "tok-bob", alice, "A1"), curve+":AAAA0001")
		fb := claimOne(t, in, "tok-bob", alice, "A1")
		require.Contains(t, fb, curve+":FB1", "no one-time key left: the fallback key")
		require.Equal(t, true, fb[curve+":FB1"].(map[string]any)["fallback"])
		require.Contains(t, claimOne(t, in, "tok-bob", alice, "A1"), curve+":FB1", "the fallback key stays available")

		s2 := syncKeys(t, in, "tok-alice", s1.NextBatch, 0)
		require.Equal(t, map[string]int{curve: 0}, s2.Counts)
		require.Empty(t, s2.Fallback, "the fallback key is used")

		// Unknown devices and users get nothing, not an error.
		r = in.Do(t, http.MethodPost, claimPath, "tok-bob", map[string]any{"one_time_keys": map[string]any{alice: map[string]any{"NOPE": curve}, "@nobody:localhost": map[string]any{"X": curve}}})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"failures":{},"one_time_keys":{}}`, string(r.Body))

		// A remote user while federation is off: the server is a failure.
		r = in.Do(t, http.MethodPost, claimPath, "tok-bob", map[string]any{"one_time_keys": map[string]any{"@carol:remote.test": map[string]any{"C1": curve}}, "timeout": 100})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"failures":{"remote.test":{}},"one_time_keys":{}}`, string(r.Body))

		// Internal API: the same upload, counts in the internal /sync.
		r = in.Do(t, http.MethodPost, "/_todeviced/internal/v1/users/"+alice+"/devices/A1/keys/upload", servertest.Secret,
			map[string]any{"one_time_keys": a1.OneTimeKeys(10, 3)})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"one_time_key_counts":{"signed_curve25519":3}}`, string(r.Body))
		r = in.Do(t, http.MethodGet, "/_todeviced/internal/v1/sync?user_id="+alice+"&device_id=A1", servertest.Secret, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"signed_curve25519":3}`, string(mustField(t, r.Body, "device_one_time_keys_count")))
		require.JSONEq(t, `[]`, string(mustField(t, r.Body, "device_unused_fallback_key_types")))
		r = in.Do(t, http.MethodPost, "/_todeviced/internal/v1/keys/claim", servertest.Secret, map[string]any{"one_time_keys": map[string]any{alice: map[string]any{"A1": curve}}})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.Contains(t, string(r.Body), curve+":AAAA0010")

		// Deleting the device deletes its keys.
		require.Equal(t, http.StatusOK, in.DeleteDevice(t, alice, "A1").Status)
		in.PutDevice(t, alice, "A1", "tok-alice2")
		require.Empty(t, claimOne(t, in, "tok-bob", alice, "A1"))
	})
}

// A changed DeviceKeys object replaces the stored one and is a device-list
// change, as in Synapse.
func TestKeysUploadChangedDeviceKeysReplace(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		first, second := servertest.NewE2EDevice(alice, "A1"), servertest.NewE2EDevice(alice, "A1")
		r := in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"device_keys": first.DeviceKeys()})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		s := in.Sync(t, "tok-alice", "", 0)
		r = in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"device_keys": second.DeviceKeys()})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		s2 := in.Sync(t, "tok-alice", s.NextBatch, 0)
		require.Equal(t, []string{alice}, s2.DeviceLists.Changed, "the user's own device list changed")
		// One-time keys now verify against the new key only.
		r = in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"one_time_keys": first.OneTimeKeys(0, 1)})
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		r = in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"one_time_keys": second.OneTimeKeys(0, 1)})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	})
}

func TestKeysUploadRefusesBadInput(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		a1 := servertest.NewE2EDevice(alice, "A1")
		other := servertest.NewE2EDevice(alice, "A1")
		wrongUser := servertest.NewE2EDevice(bob, "A1").DeviceKeys()
		wrongDevice := servertest.NewE2EDevice(alice, "A2").DeviceKeys()
		tampered := a1.DeviceKeys()
		tampered["algorithms"] = []string{"m.olm.v1.curve25519-aes-sha2"}
		unsigned := a1.DeviceKeys()
		delete(unsigned, "signatures")
		noAlgs := a1.Sign(map[string]any{"user_id": alice, "device_id": "A1", "keys": a1.DeviceKeys()["keys"]})
		badSig := a1.DeviceKeys()
		badSig["signatures"] = map[string]any{alice: map[string]any{a1.KeyID(): "!!!"}}
		otk := func(id string) map[string]any {
			return map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": map[string]any{id: a1.Sign(map[string]any{"key": "abc"})}}
		}
		for _, tc := range []struct {
			name string
			body any
			code string
		}{
			{"not JSON", `{`, "M_NOT_JSON"},
			{"device_keys null", `{"device_keys":null}`, "M_BAD_JSON"},
			{"device_keys not an object", `{"device_keys":[1]}`, "M_BAD_JSON"},
			{"wrong user", map[string]any{"device_keys": wrongUser}, "M_INVALID_PARAM"},
			{"wrong device", map[string]any{"device_keys": wrongDevice}, "M_INVALID_PARAM"},
			{"tampered", map[string]any{"device_keys": tampered}, "M_INVALID_PARAM"},
			{"unsigned", map[string]any{"device_keys": unsigned}, "M_INVALID_PARAM"},
			{"signature not base64", map[string]any{"device_keys": badSig}, "M_INVALID_PARAM"},
			{"no algorithms", map[string]any{"device_keys": noAlgs}, "M_MISSING_PARAM"},
			{"one-time key before device keys", map[string]any{"one_time_keys": a1.OneTimeKeys(0, 1)}, "M_INVALID_PARAM"},
			{"one-time key signed by another key", map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": other.OneTimeKeys(0, 1)}, "M_INVALID_PARAM"},
			{"one-time key unsigned", map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": map[string]any{"signed_curve25519:X": map[string]any{"key": "abc"}}}, "M_INVALID_PARAM"},
			{"one-time key a string", map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": map[string]any{"curve25519:X": "abc"}}, "M_BAD_JSON"},
			{"key id without colon", otk("signed_curve25519"), "M_INVALID_PARAM"},
			{"key id without algorithm", otk(":AAAA"), "M_INVALID_PARAM"},
			{"key id without id", otk("signed_curve25519:"), "M_INVALID_PARAM"},
			{"key id with control character", otk("signed_curve25519:A\u0001"), "M_INVALID_PARAM"},
			{"two fallback keys of one algorithm", map[string]any{"device_keys": a1.DeviceKeys(), "fallback_keys": map[string]any{
				"signed_curve25519:F1": a1.FallbackKey("F1")["signed_curve25519:F1"], "signed_curve25519:F2": a1.FallbackKey("F2")["signed_curve25519:F2"]}}, "M_INVALID_PARAM"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := in.Do(t, http.MethodPost, uploadPath, "tok-alice", tc.body)
				require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
				require.Equal(t, tc.code, r.Errcode(t), "%s", r.Body)
			})
		}
		// An id uploaded again with other content.
		r := in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": a1.OneTimeKeys(0, 1)})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		changed := map[string]any{"signed_curve25519:AAAA0000": a1.Sign(map[string]any{"key": "different"})}
		r = in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"one_time_keys": changed})
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))

		for _, tc := range []struct {
			name, body, code string
		}{
			{"missing one_time_keys", `{}`, "M_MISSING_PARAM"},
			{"bad user id", `{"one_time_keys":{"alice":{"A1":"signed_curve25519"}}}`, "M_INVALID_PARAM"},
			{"bad algorithm", `{"one_time_keys":{"@alice:localhost":{"A1":"a:b"}}}`, "M_INVALID_PARAM"},
			{"empty device id", `{"one_time_keys":{"@alice:localhost":{"":"signed_curve25519"}}}`, "M_INVALID_PARAM"},
			{"algorithm not a string", `{"one_time_keys":{"@alice:localhost":{"A1":1}}}`, "M_BAD_JSON"},
		} {
			t.Run("claim "+tc.name, func(t *testing.T) {
				r := in.Do(t, http.MethodPost, claimPath, "tok-bob", tc.body)
				require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
				require.Equal(t, tc.code, r.Errcode(t), "%s", r.Body)
			})
		}
	})
}

// aliceUploaded starts an instance with alice (A1, tok-alice) and bob
// (B1, tok-bob), A1 having uploaded its device keys and two one-time keys.
func aliceUploaded(t *testing.T, b servertest.Backend) (*servertest.Instance, *servertest.E2EDevice) {
	t.Helper()
	in := start(t, b)
	in.PutDevice(t, alice, "A1", "tok-alice")
	in.PutDevice(t, bob, "B1", "tok-bob")
	a1 := servertest.NewE2EDevice(alice, "A1")
	r := in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": a1.OneTimeKeys(0, 2)})
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	return in, a1
}

// A claim or an upload ends a waiting /sync of the device: its counts
// changed.
func TestKeyCountsWakeSync(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, a1 := aliceUploaded(t, b)
		s := syncKeys(t, in, "tok-alice", "", 0)

		for _, change := range []func(){
			func() { claimOne(t, in, "tok-bob", alice, "A1") },
			func() {
				r := in.Do(t, http.MethodPost, uploadPath, "tok-alice", map[string]any{"one_time_keys": a1.OneTimeKeys(5, 4)})
				require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
			},
		} {
			done := make(chan syncCounts, 1)
			go func() { done <- syncKeys(t, in, "tok-alice", s.NextBatch, time.Minute) }()
			servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
			change()
			select {
			case got := <-done:
				require.NotEqual(t, s.Counts, got.Counts)
				s = got
			case <-time.After(30 * time.Second):
				t.Fatal("the long-poll did not wake when the counts changed")
			}
		}
		require.Equal(t, map[string]int{curve: 5}, s.Counts)
	})
}

// An e2ee-only sliding-sync connection (no to_device extension) gets the
// counts and is woken by a claim too.
func TestSlidingSyncE2EEKeyCountsWake(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, _ := aliceUploaded(t, b)
		first := ss(t, in, "tok-alice", "", 0, ssBody(false, "", 0, true))
		requireClaimEndsSlidingWait(t, in, first.Pos, ssBody(false, "", 0, true), "the e2ee-only connection")
	})
}

// requireClaimEndsSlidingWait long-polls alice's sliding-sync connection at
// pos with body, has bob claim one of A1's two keys once it waits, and
// requires the wait to end with the new count.
func requireClaimEndsSlidingWait(t *testing.T, in *servertest.Instance, pos string, body any, what string) {
	t.Helper()
	done := make(chan servertest.Response, 1)
	go func() { done <- rawSS(context.Background(), t, in, "tok-alice", pos, time.Minute, body) }()
	servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
	claimEndsWait(t, in, done, what)
}

// claimEndsWait has bob claim one of A1's two keys and requires the
// sliding-sync long-poll answering on done to end with the new count.
func claimEndsWait(t *testing.T, in *servertest.Instance, done <-chan servertest.Response, what string) {
	t.Helper()
	claimOne(t, in, "tok-bob", alice, "A1")
	select {
	case r := <-done:
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"signed_curve25519":1}`, string(mustField(t, r.Body, "extensions", "e2ee", "device_one_time_keys_count")))
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not wake when the counts changed", what)
	}
}

// A claim that lands between a device's /sync answer and its next long-poll
// is news to that long-poll: it returns at once with the new counts, not
// with the next event or at its timeout (devicesync.countsSeen).
func TestKeyCountsChangedBetweenSyncsEndTheNextAtOnce(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, _ := aliceUploaded(t, b)
		s := syncKeys(t, in, "tok-alice", "", 0)
		claimOne(t, in, "tok-bob", alice, "A1")
		done := make(chan syncCounts, 1)
		go func() { done <- syncKeys(t, in, "tok-alice", s.NextBatch, 10*time.Minute) }()
		select {
		case got := <-done:
			require.NotEqual(t, s.Counts, got.Counts)
		case <-time.After(30 * time.Second):
			t.Fatal("the long-poll waited although the counts had changed since the last answer")
		}
	})
}

// An e2ee-only sliding-sync connection's long-poll is quiet too: after an
// answer it waits without a check, and a claim still ends it with the new
// count. An answer that read no inbox never lets a to_device request skip
// its check: a message pending since before it comes at once.
func TestQuietSlidingSyncE2EEConnection(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, _ := aliceUploaded(t, b)
		servertest.WaitFor(t, "the replica to hear wake-ups", func() bool { return !in.Hub().Deaf() })
		e2ee := ssBody(false, "", 0, true)
		first := ss(t, in, "tok-alice", "", 0, e2ee)
		_, skipped := in.SyncChecks()
		done := make(chan servertest.Response, 1)
		go func() { done <- rawSS(context.Background(), t, in, "tok-alice", first.Pos, time.Minute, e2ee) }()
		servertest.WaitFor(t, "the long-poll to skip its first check", func() bool { _, k := in.SyncChecks(); return k == skipped+1 })
		claimEndsWait(t, in, done, "the quiet e2ee long-poll")

		in.Send(t, "tok-bob", "m.test", "pending", map[string]map[string]any{alice: {"A1": map[string]any{"n": 1}}})
		// Answered after the message, reading no inbox; the connection
		// then turns to_device on.
		answered := ss(t, in, "tok-alice", "", 0, e2ee)
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r := rawSS(c, t, in, "tok-alice", answered.Pos, time.Hour, ssBody(true, "", 100, true))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var got ssResponse
		require.NoError(t, json.Unmarshal(r.Body, &got))
		require.Len(t, got.Extensions.ToDevice.Events, 1, "the pending message, at once")
	})
}
