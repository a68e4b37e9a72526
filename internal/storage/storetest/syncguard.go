package storetest

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
)

// msgNs is eventNs for stored messages.
func msgNs(t *testing.T, msgs []inbox.Message) []int {
	t.Helper()
	out := make([]int, len(msgs))
	for i, m := range msgs {
		var c struct{ N int }
		require.NoError(t, json.Unmarshal(m.Content, &c))
		out[i] = c.N
	}
	return out
}

// A sync asked for the key counts reads exactly what the device store's own
// read does (the same statement, in the sync's round trip), per device.
func testSyncReadsKeyCounts(t *testing.T, e *Env) {
	b := e.Open(Options{})
	d := mkDevice(t, b, alice, "A1")
	other := mkDevice(t, b, alice, "A2")
	counts := func(dev inbox.Recipient) inbox.OneTimeKeyCounts {
		t.Helper()
		res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, Limit: 10, KeyCounts: true})
		require.NoError(t, err)
		alone, err := b.Devices().KeyCounts(ctx(t), dev.NID)
		require.NoError(t, err)
		require.Equal(t, alone, devicelists.KeyCounts(res.KeyCounts), "the sync's counts are the store's")
		return res.KeyCounts
	}
	none := counts(d)
	require.Equal(t, map[string]int{}, none.OneTimeKeys, "no keys: an empty map, not nil")
	require.Equal(t, []string{}, none.UnusedFallback)

	fb := append(otks(curve, 900, 1), otks("other_alg", 900, 1)...)
	upload(t, b, devicelists.KeyUpload{UserID: alice, DeviceID: "A1",
		OneTimeKeys: append(otks(curve, 0, 3), otks("other_alg", 0, 2)...), FallbackKeys: fb})
	c := counts(d)
	require.Equal(t, map[string]int{curve: 3, "other_alg": 2}, c.OneTimeKeys)
	require.Equal(t, []string{"other_alg", curve}, c.UnusedFallback, "sorted")

	claimKeys(t, b, devicelists.KeyClaim{UserID: alice, DeviceID: "A1", Algorithm: curve})
	require.Equal(t, 2, counts(d).OneTimeKeys[curve])
	require.Empty(t, counts(other).OneTimeKeys, "another device's keys are not counted")

	res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: d, Limit: 10})
	require.NoError(t, err)
	require.Nil(t, res.KeyCounts.OneTimeKeys, "not read unless asked for")
}

// A sync made with a token hash does nothing unless that token still names
// the live device: it deletes nothing (the messages wait for a sync with a
// good token), returns nothing and says ErrTokenRevoked, before any other
// refusal.
func testSyncTokenGuard(t *testing.T, e *Env) {
	b := e.Open(Options{})
	tokA, tokB, wrong := devicelists.HashToken("tok-a"), devicelists.HashToken("tok-b"), devicelists.HashToken("wrong")
	d, _, err := b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1", TokenHash: tokA})
	require.NoError(t, err)
	dev := inbox.Recipient{UserID: bob, NID: d.NID}
	for i := range 3 {
		accept(t, b, txn(alice, "A1", "m.test", string(rune('a'+i))), to(bob, "B1", content(i)))
	}
	guarded := func(dev inbox.Recipient, hash []byte, since inbox.Position) (inbox.SyncResult, error) {
		t.Helper()
		return b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, AckLo: since.Lo, AckHi: since.Hi, Limit: 100,
			DeviceListHead: true, KeyCounts: true, TokenHash: hash})
	}
	pending := func() []int {
		t.Helper()
		res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, Limit: 100})
		require.NoError(t, err)
		return msgNs(t, res.Messages)
	}

	res, err := guarded(dev, tokA, inbox.Position{NID: dev.NID})
	require.NoError(t, err, "the device's own token")
	require.Equal(t, []int{0, 1, 2}, msgNs(t, res.Messages))
	require.NotNil(t, res.KeyCounts.OneTimeKeys)
	require.Positive(t, res.DeviceListHead)
	since := inbox.Position{NID: dev.NID, Hi: res.Messages[2].Pos}

	for name, q := range map[string]inbox.Position{
		"acknowledging":             since,
		"reading":                   {NID: dev.NID},
		"with a since never issued": {NID: dev.NID, Lo: since.Hi, Hi: 99_999_999},
	} {
		res, err = guarded(dev, wrong, q)
		require.ErrorIs(t, err, inbox.ErrTokenRevoked, "another token, %s", name)
		require.Empty(t, res.Messages, name)
		require.Zero(t, res.Acked, name)
	}
	require.Equal(t, []int{0, 1, 2}, pending(), "a wrong token deleted nothing")

	// The internal API gives the device another token: the old one stops
	// at once, and its acknowledgement deletes nothing.
	_, _, err = b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1", TokenHash: tokB})
	require.NoError(t, err)
	_, err = guarded(dev, tokA, since)
	require.ErrorIs(t, err, inbox.ErrTokenRevoked, "the replaced token")
	require.Equal(t, []int{0, 1, 2}, pending(), "a revoked token deleted nothing")

	// The old token given to another device works for that device only.
	d2, _, err := b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B2", TokenHash: tokA})
	require.NoError(t, err)
	_, err = guarded(dev, tokA, since)
	require.ErrorIs(t, err, inbox.ErrTokenRevoked, "a token of another device")
	_, err = guarded(inbox.Recipient{UserID: bob, NID: d2.NID}, tokA, inbox.Position{NID: d2.NID})
	require.NoError(t, err)

	res, err = guarded(dev, tokB, since)
	require.NoError(t, err, "the new token")
	require.Equal(t, 3, res.Acked)
	require.Empty(t, res.Messages)
	require.Empty(t, pending())

	// A device without a token of ours (authenticated by the homeserver):
	// no guard can hold for it.
	up := mkDevice(t, b, carol, "C1")
	accept(t, b, txn(alice, "A1", "m.test", "carol"), to(carol, "C1", content(7)))
	_, err = guarded(up, tokB, inbox.Position{NID: up.NID})
	require.ErrorIs(t, err, inbox.ErrTokenRevoked)
	res, err = b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: up, Limit: 100})
	require.NoError(t, err, "unguarded, as the internal API syncs")
	require.Equal(t, []int{7}, msgNs(t, res.Messages))

	// A deleted device's token is revoked with it; unguarded, the device
	// is gone.
	accept(t, b, txn(alice, "A1", "m.test", "late"), to(bob, "B1", content(3)))
	_, err = b.Devices().DeleteDevice(ctx(t), bob, "B1")
	require.NoError(t, err)
	_, err = guarded(dev, tokB, since)
	require.ErrorIs(t, err, inbox.ErrTokenRevoked)
	_, err = b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, AckLo: since.Lo, AckHi: since.Hi, Limit: 100})
	require.ErrorIs(t, err, inbox.ErrDeviceGone)
}
