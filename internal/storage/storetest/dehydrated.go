package storetest

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
)

func putDehydrated(t *testing.T, b storage.Backend, user, device, data string, nOTK int) (devicelists.Device, *devicelists.Device) {
	t.Helper()
	d, replaced, err := b.Devices().PutDehydrated(ctx(t), devicelists.DehydratedPut{
		UserID: user, DeviceID: device, Data: json.RawMessage(data),
		DeviceKeys:   keysFor(user, device, "curve-"+device),
		OneTimeKeys:  otks(curve, 0, nOTK),
		FallbackKeys: []devicelists.OneTimeKey{{Algorithm: curve, KeyID: "FB", Key: json.RawMessage(`{"key":"fb","fallback":true}`)}},
	})
	require.NoError(t, err)
	return d, replaced
}

// testDehydratedDevices: one dehydrated device per user, a device of the
// user like any other but without a token; replacing or deleting it takes
// its row, keys and inbox the way a deleted device goes.
func testDehydratedDevices(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Devices()
	dl := lists(b)
	svc := Service(b, server)

	_, err := s.Dehydrated(ctx(t), alice)
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	_, err = s.DeleteDehydrated(ctx(t), alice)
	require.ErrorIs(t, err, devicelists.ErrNotFound)

	mkDevice(t, b, alice, "A1")
	_, _, err = s.PutDehydrated(ctx(t), devicelists.DehydratedPut{UserID: alice, DeviceID: "A1", Data: json.RawMessage(`{"algorithm":"x"}`),
		DeviceKeys: keysFor(alice, "A1", "c")})
	require.ErrorIs(t, err, devicelists.ErrNotDehydrated, "an ordinary device is never made dehydrated")
	_, err = s.Dehydrated(ctx(t), alice)
	require.ErrorIs(t, err, devicelists.ErrNotFound, "the refused upload stored nothing")

	h0 := head(t, dl)
	d1, replaced := putDehydrated(t, b, alice, "D1", `{"account":"one","algorithm":"x"}`, 3)
	require.Nil(t, replaced)
	got, err := s.Dehydrated(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, "D1", got.DeviceID)
	require.Equal(t, d1.NID, got.NID)
	require.JSONEq(t, `{"account":"one","algorithm":"x"}`, string(got.Data))
	require.Contains(t, changes(t, dl, alice, h0, head(t, dl)).Changed, alice, "a new dehydrated device is a device-list change")
	devs, err := s.UserDevices(ctx(t), alice)
	require.NoError(t, err)
	require.Len(t, devs, 2, "it is a device of the user")
	keys, err := s.LocalKeys(ctx(t), map[string][]string{alice: nil})
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, "D1", keys[1].DeviceID)
	require.JSONEq(t, string(keysFor(alice, "D1", "curve-D1")), string(keys[1].Keys), "its keys answer /keys/query")
	c, err := s.KeyCounts(ctx(t), d1.NID)
	require.NoError(t, err)
	require.Equal(t, map[string]int{curve: 3}, c.OneTimeKeys)
	require.Equal(t, []string{curve}, c.UnusedFallback)

	// Messages reach it by id and through "*"; its owner pages through them
	// and each next position acknowledges the page before it.
	for i := range 3 {
		accept(t, b, txn(bob, "B1", "m.test", fmt.Sprint(i)), to(alice, "D1", content(i)))
	}
	accept(t, b, txn(bob, "B1", "m.test", "star"), to(alice, "*", content(3)))
	dev := inbox.Recipient{UserID: alice, NID: d1.NID}
	first, err := svc.Sync(ctx(t), dev, inbox.Position{NID: d1.NID}, 2)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, eventNs(t, first.Events))
	require.True(t, first.Limited)
	again, err := svc.Sync(ctx(t), dev, inbox.Position{NID: d1.NID}, 2)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, eventNs(t, again.Events), "nothing is acknowledged before its next position comes back")
	second, err := svc.Sync(ctx(t), dev, first.Next, 2)
	require.NoError(t, err)
	require.Equal(t, []int{2, 3}, eventNs(t, second.Events))
	replay, err := svc.Sync(ctx(t), dev, inbox.Position{NID: d1.NID}, 10)
	require.NoError(t, err)
	require.Equal(t, []int{2, 3}, eventNs(t, replay.Events), "the first page was deleted")

	// Replacing it deletes the old device, its keys and (by the tombstone's
	// purge) its inbox; the new one starts empty.
	h1 := head(t, dl)
	d2, replaced := putDehydrated(t, b, alice, "D2", `{"algorithm":"x","account":"two"}`, 1)
	require.NotNil(t, replaced)
	require.Equal(t, d1.NID, replaced.NID)
	require.Equal(t, "D1", replaced.DeviceID)
	require.Contains(t, changes(t, dl, alice, h1, head(t, dl)).Changed, alice)
	_, err = s.Device(ctx(t), alice, "D1")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	c, err = s.KeyCounts(ctx(t), d1.NID)
	require.NoError(t, err)
	require.Empty(t, c.OneTimeKeys, "the old device's keys are gone")
	require.Empty(t, c.UnusedFallback)
	_, err = svc.Sync(ctx(t), dev, inbox.Position{NID: d1.NID}, 10)
	require.ErrorIs(t, err, inbox.ErrDeviceGone)
	tombs, err := s.Tombstones(ctx(t), 10)
	require.NoError(t, err)
	require.Len(t, tombs, 1)
	require.Equal(t, d1.NID, tombs[0].NID)
	n, _, err := b.Inbox().PurgeDevice(ctx(t), dev, 0, 100)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the old inbox is purged")
	require.NoError(t, s.ForgetTombstone(ctx(t), d1.NID))
	evs, _ := drain(t, svc, inbox.Recipient{UserID: alice, NID: d2.NID}, inbox.Position{NID: d2.NID})
	require.Empty(t, evs)
	got, err = s.Dehydrated(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, "D2", got.DeviceID)

	// The same id again is a new incarnation.
	d3, replaced := putDehydrated(t, b, alice, "D2", `{"algorithm":"x"}`, 0)
	require.NotNil(t, replaced)
	require.Equal(t, d2.NID, replaced.NID)
	require.NotEqual(t, d2.NID, d3.NID)
	devs, err = s.UserDevices(ctx(t), alice)
	require.NoError(t, err)
	require.Len(t, devs, 2)

	// Another user's dehydrated device is theirs alone.
	putDehydrated(t, b, bob, "D2", `{"algorithm":"x"}`, 0)
	got, err = s.Dehydrated(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, d3.NID, got.NID)

	gone, err := s.DeleteDehydrated(ctx(t), alice)
	require.NoError(t, err)
	require.Equal(t, d3.NID, gone.NID)
	_, err = s.Dehydrated(ctx(t), alice)
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	_, err = s.Device(ctx(t), alice, "A1")
	require.NoError(t, err, "the ordinary device stays")
	_, err = s.Dehydrated(ctx(t), bob)
	require.NoError(t, err)
}

// testDehydratedConcurrentUploads: uploads racing (on PostgreSQL, each in
// a transaction of its own) all succeed and leave exactly one dehydrated
// device.
func testDehydratedConcurrentUploads(t *testing.T, e *Env) {
	b := e.Open(Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Go(func() {
			device := fmt.Sprintf("R%d", i)
			_, _, err := b.Devices().PutDehydrated(ctx(t), devicelists.DehydratedPut{UserID: carol, DeviceID: device,
				Data: json.RawMessage(`{"algorithm":"x"}`), DeviceKeys: keysFor(carol, device, "c"), OneTimeKeys: otks(curve, 0, 2)})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	devs, err := b.Devices().UserDevices(ctx(t), carol)
	require.NoError(t, err)
	require.Len(t, devs, 1, "one dehydrated device is left")
	got, err := b.Devices().Dehydrated(ctx(t), carol)
	require.NoError(t, err)
	require.Equal(t, devs[0].NID, got.NID)
}
