package storetest

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/wakeup"
)

const curve = "signed_curve25519"

// otks makes n one-time keys of the algorithm, ids AAAA0000 upwards.
func otks(alg string, from, n int) []devicelists.OneTimeKey {
	out := make([]devicelists.OneTimeKey, n)
	for i := range out {
		id := fmt.Sprintf("AAAA%04d", from+i)
		out[i] = devicelists.OneTimeKey{Algorithm: alg, KeyID: id, Key: json.RawMessage(`{"key":"` + id + `"}`)}
	}
	return out
}

func upload(t *testing.T, b storage.Backend, u devicelists.KeyUpload) devicelists.KeyCounts {
	t.Helper()
	c, _, err := b.Devices().UploadKeys(ctx(t), u)
	require.NoError(t, err)
	return c
}

func claimKeys(t *testing.T, b storage.Backend, claims ...devicelists.KeyClaim) []devicelists.ClaimedKey {
	t.Helper()
	got, err := b.Devices().ClaimKeys(ctx(t), claims)
	require.NoError(t, err)
	require.Len(t, got, len(claims))
	return got
}

func testOneTimeKeyCounts(t *testing.T, e *Env) {
	b := e.Open(Options{})
	d := mkDevice(t, b, alice, "A1")
	c := upload(t, b, devicelists.KeyUpload{UserID: alice, DeviceID: "A1", OneTimeKeys: append(otks(curve, 0, 3), otks("other_alg", 0, 2)...)})
	require.Equal(t, map[string]int{curve: 3, "other_alg": 2}, c.OneTimeKeys)
	require.Empty(t, c.UnusedFallback)

	again := upload(t, b, devicelists.KeyUpload{UserID: alice, DeviceID: "A1", OneTimeKeys: otks(curve, 1, 3)})
	require.Equal(t, 4, again.OneTimeKeys[curve], "the same key again is ignored, new ones are added")

	conflict := otks(curve, 0, 1)
	conflict[0].Key = json.RawMessage(`{"key":"different"}`)
	conflict = append(conflict, otks(curve, 50, 1)...)
	_, _, err := b.Devices().UploadKeys(ctx(t), devicelists.KeyUpload{UserID: alice, DeviceID: "A1", OneTimeKeys: conflict,
		DeviceKeys: keysFor(alice, "A1", "new")})
	require.Error(t, err, "an id stored with other content is refused")
	got, err := b.Devices().KeyCounts(ctx(t), d.NID)
	require.NoError(t, err)
	require.Equal(t, 4, got.OneTimeKeys[curve], "a refused upload stores nothing")
	keys, err := b.Devices().LocalKeys(ctx(t), map[string][]string{alice: {"A1"}})
	require.NoError(t, err)
	require.Nil(t, keys[0].Keys, "not even its device keys")

	// Device keys: a change is a device-list change, the same keys again
	// are not.
	head := func() int64 {
		st, err := b.Devices().StreamState(ctx(t))
		require.NoError(t, err)
		return st.Head
	}
	h0 := head()
	_, changed, err := b.Devices().UploadKeys(ctx(t), devicelists.KeyUpload{UserID: alice, DeviceID: "A1", DeviceKeys: keysFor(alice, "A1", "k1")})
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, h0+1, head())
	_, changed, err = b.Devices().UploadKeys(ctx(t), devicelists.KeyUpload{UserID: alice, DeviceID: "A1", DeviceKeys: keysFor(alice, "A1", "k1")})
	require.NoError(t, err)
	require.False(t, changed)
	require.Equal(t, h0+1, head(), "the same keys again are no change")

	_, _, err = b.Devices().UploadKeys(ctx(t), devicelists.KeyUpload{UserID: alice, DeviceID: "NOPE", OneTimeKeys: otks(curve, 0, 1)})
	require.ErrorIs(t, err, devicelists.ErrNotFound)

	none, err := b.Devices().KeyCounts(ctx(t), d.NID+1000)
	require.NoError(t, err)
	require.Empty(t, none.OneTimeKeys)
	require.Empty(t, none.UnusedFallback)
}

func testClaimAndFallback(t *testing.T, e *Env) {
	hub := wakeup.NewHub()
	b := e.Open(Options{Hub: hub})
	d := mkDevice(t, b, bob, "B1")
	fb := otks(curve, 900, 1)
	fb[0].Key = json.RawMessage(`{"fallback":true,"key":"fb1"}`)
	c := upload(t, b, devicelists.KeyUpload{UserID: bob, DeviceID: "B1", OneTimeKeys: otks(curve, 0, 2), FallbackKeys: fb})
	require.Equal(t, []string{curve}, c.UnusedFallback)

	w := hub.Register(wakeup.DeviceKey(d.NID))
	defer w.Close()
	want := devicelists.KeyClaim{UserID: bob, DeviceID: "B1", Algorithm: curve}
	first := claimKeys(t, b, want)[0]
	require.False(t, first.Fallback)
	require.Equal(t, "AAAA0000", first.Key.KeyID, "the lowest key id first")
	require.JSONEq(t, `{"key":"AAAA0000"}`, string(first.Key.Key))
	require.Equal(t, d.NID, first.NID)
	awaitSignal(t, w, "a claim wakes the device (its counts changed)")
	second := claimKeys(t, b, want)[0]
	require.Equal(t, "AAAA0001", second.Key.KeyID)

	for range 2 {
		f := claimKeys(t, b, want)[0]
		require.True(t, f.Fallback, "no one-time key left: the fallback key")
		require.Equal(t, "AAAA0900", f.Key.KeyID)
		require.JSONEq(t, string(fb[0].Key), string(f.Key.Key))
	}
	c, err := b.Devices().KeyCounts(ctx(t), d.NID)
	require.NoError(t, err)
	require.Equal(t, 0, c.OneTimeKeys[curve])
	require.Empty(t, c.UnusedFallback, "the fallback key is used")

	// The same fallback key again keeps it used; a new one is unused.
	c = upload(t, b, devicelists.KeyUpload{UserID: bob, DeviceID: "B1", FallbackKeys: fb})
	require.Empty(t, c.UnusedFallback)
	fb2 := otks(curve, 901, 1)
	c = upload(t, b, devicelists.KeyUpload{UserID: bob, DeviceID: "B1", FallbackKeys: fb2})
	require.Equal(t, []string{curve}, c.UnusedFallback)
	require.Equal(t, "AAAA0901", claimKeys(t, b, want)[0].Key.KeyID, "the replaced fallback key is gone")

	nothing := claimKeys(t, b, devicelists.KeyClaim{UserID: bob, DeviceID: "B1", Algorithm: "other_alg"}, devicelists.KeyClaim{UserID: bob, DeviceID: "NOPE", Algorithm: curve})
	for _, n := range nothing {
		require.Nil(t, n.Key.Key)
	}

	// Deleting the device deletes its keys; the re-created device has none.
	upload(t, b, devicelists.KeyUpload{UserID: bob, DeviceID: "B1", OneTimeKeys: otks(curve, 0, 5)})
	_, err = b.Devices().DeleteDevice(ctx(t), bob, "B1")
	require.NoError(t, err)
	require.Nil(t, claimKeys(t, b, want)[0].Key.Key, "a deleted device's keys are not handed out")
	c, err = b.Devices().KeyCounts(ctx(t), d.NID)
	require.NoError(t, err)
	require.Empty(t, c.OneTimeKeys)
	require.Empty(t, c.UnusedFallback)
	d2 := mkDevice(t, b, bob, "B1")
	c, err = b.Devices().KeyCounts(ctx(t), d2.NID)
	require.NoError(t, err)
	require.Empty(t, c.OneTimeKeys)
	require.Nil(t, claimKeys(t, b, want)[0].Key.Key)
}

// testClaimExactlyOnce races many claimers (on two instances where the
// backend allows several) for the keys of one device: every key is handed
// out once, and the fallback key only once they are gone.
func testClaimExactlyOnce(t *testing.T, e *Env) {
	insts := []storage.Backend{e.Open(Options{})}
	if e.h.MultiInstance {
		insts = append(insts, e.Open(Options{}))
	}
	b := insts[0]
	const keys, claimers, each = 60, 16, 5 // 80 claims for 60 keys
	mkDevice(t, b, carol, "C1")
	upload(t, b, devicelists.KeyUpload{UserID: carol, DeviceID: "C1", OneTimeKeys: otks(curve, 0, keys), FallbackKeys: otks(curve, 999, 1)})
	want := devicelists.KeyClaim{UserID: carol, DeviceID: "C1", Algorithm: curve}
	var mu sync.Mutex
	seen := map[string]int{}
	fallbacks, empty := 0, 0
	var wg sync.WaitGroup
	errs := make(chan error, claimers*each)
	for i := range claimers {
		wg.Go(func() {
			inst := insts[i%len(insts)]
			for range each {
				got, err := inst.Devices().ClaimKeys(ctx(t), []devicelists.KeyClaim{want})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				switch {
				case got[0].Key.Key == nil:
					empty++
				case got[0].Fallback:
					fallbacks++
				default:
					seen[got[0].Key.KeyID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, seen, keys, "every one-time key handed out")
	for id, n := range seen {
		require.Equal(t, 1, n, "key %s handed out more than once", id)
	}
	require.Zero(t, empty, "the fallback key stays available")
	require.Equal(t, claimers*each-keys, fallbacks)
}
