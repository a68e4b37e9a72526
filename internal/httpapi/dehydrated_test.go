package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/servertest"
)

const dehydratedPath = httpapi.DehydratedDevicePath

// dehydratedUpload is a PUT …/dehydrated_device body for the device d.
func dehydratedUpload(d *servertest.E2EDevice, account string) map[string]any {
	return map[string]any{
		"device_id":                   d.DeviceID,
		"device_data":                 map[string]any{"algorithm": "org.matrix.msc3814.v1.olm", "account": account},
		"initial_device_display_name": "Dehydrated device",
		"device_keys":                 d.DeviceKeys(),
		"one_time_keys":               d.OneTimeKeys(0, 2),
		"fallback_keys":               d.FallbackKey("FB"),
	}
}

type dehydratedEvents struct {
	Events    []servertest.Event `json:"events"`
	NextBatch string             `json:"next_batch"`
}

// fetchDehydrated calls …/dehydrated_device/{id}/events and requires 200.
func fetchDehydrated(t *testing.T, in *servertest.Instance, token, deviceID, query, nextBatch string) dehydratedEvents {
	t.Helper()
	body := map[string]any{}
	if nextBatch != "" {
		body["next_batch"] = nextBatch
	}
	r := in.Do(t, http.MethodPost, dehydratedPath+"/"+deviceID+"/events"+query, token, body)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var e dehydratedEvents
	require.NoError(t, json.Unmarshal(r.Body, &e))
	require.NotEmpty(t, e.NextBatch)
	return e
}

// queriedDevices are the device ids /keys/query answers for a user.
func queriedDevices(t *testing.T, in *servertest.Instance, token, userID string) []string {
	t.Helper()
	r := in.Do(t, http.MethodPost, "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{userID: []string{}}})
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	devs, _ := r.JSON(t)["device_keys"].(map[string]any)[userID].(map[string]any)
	var out []string
	for id := range devs {
		out = append(out, id)
	}
	return out
}

// TestDehydratedDevice: MSC3814 through the real router, as a client uses
// it: upload a dehydrated device, others encrypt for it (its keys are
// queried and claimed, messages reach it by id and through "*"), the
// owner's new device reads its messages with next_batch acknowledging
// them, and a new upload replaces it.
func TestDehydratedDevice(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		before := in.Sync(t, "tok-alice", "", 0)

		r := in.Do(t, http.MethodGet, dehydratedPath, "tok-alice", nil)
		require.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
		require.Equal(t, "M_NOT_FOUND", r.Errcode(t))
		r = in.Do(t, http.MethodDelete, dehydratedPath, "tok-alice", nil)
		require.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)

		// An ordinary device's id is refused.
		r = in.Do(t, http.MethodPut, dehydratedPath, "tok-alice", dehydratedUpload(servertest.NewE2EDevice(alice, "A1"), "x"))
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		// Keys signed by another key are refused.
		d1 := servertest.NewE2EDevice(alice, "DEHYD1")
		forged := dehydratedUpload(d1, "x")
		forgedKeys := d1.DeviceKeys()
		forgedKeys["keys"].(map[string]any)["curve25519:DEHYD1"] = "changed"
		forged["device_keys"] = forgedKeys
		r = in.Do(t, http.MethodPut, dehydratedPath, "tok-alice", forged)
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))

		r = in.Do(t, http.MethodPut, dehydratedPath, "tok-alice", dehydratedUpload(d1, "one"))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DEHYD1"}`, string(r.Body))
		r = in.Do(t, http.MethodGet, dehydratedPath, "tok-alice", nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DEHYD1","device_data":{"algorithm":"org.matrix.msc3814.v1.olm","account":"one"}}`, string(r.Body))

		// It is a device of alice's: a device-list change, its keys
		// queried and claimed; it has no access token of its own.
		after := in.Sync(t, "tok-alice", before.NextBatch, 0)
		require.Contains(t, after.DeviceLists.Changed, alice)
		require.ElementsMatch(t, []string{"DEHYD1"}, queriedDevices(t, in, "tok-bob", alice))
		require.Len(t, claimOne(t, in, "tok-bob", alice, "DEHYD1"), 1)

		// Bob writes to it by id and to all of alice's devices.
		in.Send(t, "tok-bob", "m.test", "t1", map[string]map[string]any{alice: {"DEHYD1": map[string]any{"n": 1}}})
		in.Send(t, "tok-bob", "m.test", "t2", map[string]map[string]any{alice: {"*": map[string]any{"n": 2}}})
		in.Send(t, "tok-bob", "m.test", "t3", map[string]map[string]any{alice: {"DEHYD1": map[string]any{"n": 3}}})

		// Only alice, only for her current dehydrated device.
		r = in.Do(t, http.MethodPost, dehydratedPath+"/DEHYD1/events", "tok-bob", map[string]any{})
		require.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
		require.Equal(t, "M_FORBIDDEN", r.Errcode(t))
		r = in.Do(t, http.MethodGet, dehydratedPath, "tok-bob", nil)
		require.Equal(t, http.StatusNotFound, r.Status, "bob sees no dehydrated device of alice's: %s", r.Body)
		r = in.Do(t, http.MethodPost, dehydratedPath+"/A1/events", "tok-alice", map[string]any{})
		require.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
		r = in.Do(t, http.MethodPost, dehydratedPath+"/DEHYD1/events", "", map[string]any{})
		require.Equal(t, http.StatusUnauthorized, r.Status, "%s", r.Body)

		// Alice's new device reads them, two at a time; each next_batch
		// acknowledges the page it followed.
		in.PutDevice(t, alice, "A2", "tok-alice2")
		p1 := fetchDehydrated(t, in, "tok-alice2", "DEHYD1", "?limit=2", "")
		require.Equal(t, []int{1, 2}, ns(p1.Events))
		require.Equal(t, bob, p1.Events[0].Sender)
		require.Equal(t, "m.test", p1.Events[0].Type)
		again := fetchDehydrated(t, in, "tok-alice2", "DEHYD1", "?limit=2", "")
		require.Equal(t, []int{1, 2}, ns(again.Events), "nothing is deleted before next_batch comes back")
		p2 := fetchDehydrated(t, in, "tok-alice2", "DEHYD1", "?limit=2", p1.NextBatch)
		require.Equal(t, []int{3}, ns(p2.Events))
		p3 := fetchDehydrated(t, in, "tok-alice2", "DEHYD1", "", p2.NextBatch)
		require.Empty(t, p3.Events)
		require.NotNil(t, p3.Events, "events is a list, never null")
		replay := fetchDehydrated(t, in, "tok-alice2", "DEHYD1", "", "")
		require.Empty(t, replay.Events, "what was acknowledged is gone")

		// A next_batch never issued deletes nothing and is refused; junk
		// too.
		in.Send(t, "tok-bob", "m.test", "t4", map[string]map[string]any{alice: {"DEHYD1": map[string]any{"n": 4}}})
		parts := strings.Split(p3.NextBatch, "_")
		require.Len(t, parts, 4)
		parts[3] = "9000000000000"
		r = in.Do(t, http.MethodPost, dehydratedPath+"/DEHYD1/events", "tok-alice2", map[string]any{"next_batch": strings.Join(parts, "_")})
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		r = in.Do(t, http.MethodPost, dehydratedPath+"/DEHYD1/events", "tok-alice2", map[string]any{"next_batch": "d17"})
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		require.Equal(t, "M_INVALID_PARAM", r.Errcode(t))
		r = in.Do(t, http.MethodPost, dehydratedPath+"/DEHYD1/events", "tok-alice2", "not json")
		require.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)
		require.Equal(t, "M_NOT_JSON", r.Errcode(t))
		require.Equal(t, []int{4}, ns(fetchDehydrated(t, in, "tok-alice2", "DEHYD1", "", p3.NextBatch).Events))

		// A new upload replaces it: the old id is gone from /keys/query,
		// its events are refused, its inbox is purged; the new one starts
		// empty.
		d2 := servertest.NewE2EDevice(alice, "DEHYD2")
		r = in.Do(t, http.MethodPut, dehydratedPath, "tok-alice2", dehydratedUpload(d2, "two"))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DEHYD2"}`, string(r.Body))
		require.ElementsMatch(t, []string{"DEHYD2"}, queriedDevices(t, in, "tok-bob", alice))
		r = in.Do(t, http.MethodPost, dehydratedPath+"/DEHYD1/events", "tok-alice2", map[string]any{})
		require.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
		servertest.WaitFor(t, "the old inbox purged", func() bool {
			tombs, err := in.Backend().Devices().Tombstones(context.Background(), 10)
			require.NoError(t, err)
			return len(tombs) == 0
		})
		require.Empty(t, fetchDehydrated(t, in, "tok-alice2", "DEHYD2", "", "").Events)

		r = in.Do(t, http.MethodDelete, dehydratedPath, "tok-alice", nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DEHYD2"}`, string(r.Body))
		r = in.Do(t, http.MethodGet, dehydratedPath, "tok-alice", nil)
		require.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
		require.Empty(t, queriedDevices(t, in, "tok-bob", alice))
	})
}

// TestDehydratedDeviceInternal: the internal API's twins, for a homeserver
// that keeps the client API and authenticates its users itself.
func TestDehydratedDeviceInternal(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		base := "/_todeviced/internal/v1/users/" + alice + "/dehydrated_device"
		d := servertest.NewE2EDevice(alice, "DH")
		r := in.Do(t, http.MethodPut, base, servertest.Secret, dehydratedUpload(d, "one"))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DH"}`, string(r.Body))
		r = in.Do(t, http.MethodPut, base, "tok-bob", dehydratedUpload(d, "one"))
		require.Equal(t, http.StatusUnauthorized, r.Status, "a client token is not the internal secret: %s", r.Body)
		r = in.Do(t, http.MethodGet, base, servertest.Secret, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DH","device_data":{"algorithm":"org.matrix.msc3814.v1.olm","account":"one"}}`, string(r.Body))

		in.Send(t, "tok-bob", "m.test", "t1", map[string]map[string]any{alice: {"*": map[string]any{"n": 1}}})
		r = in.Do(t, http.MethodPost, base+"/DH/events", servertest.Secret, map[string]any{})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var e dehydratedEvents
		require.NoError(t, json.Unmarshal(r.Body, &e))
		require.Equal(t, []int{1}, ns(e.Events))
		r = in.Do(t, http.MethodPost, base+"/DH/events", servertest.Secret, map[string]any{"next_batch": e.NextBatch})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `[]`, string(mustField(t, r.Body, "events")))
		r = in.Do(t, http.MethodPost, base+"/OTHER/events", servertest.Secret, map[string]any{})
		require.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)

		r = in.Do(t, http.MethodDelete, base, servertest.Secret, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"device_id":"DH"}`, string(r.Body))
		r = in.Do(t, http.MethodDelete, base, servertest.Secret, nil)
		require.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
	})
}
