package devicelists

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDeviceListUpdateEDU(t *testing.T) {
	keys := json.RawMessage(`{"user_id":"@a:x.test","device_id":"D","keys":{}}`)
	edu, err := DeviceListUpdateEDU("@a:x.test", 7, 0, DeviceUpdate{DeviceID: "D", DisplayName: "phone", Keys: keys})
	require.NoError(t, err)
	require.JSONEq(t, `{"edu_type":"m.device_list_update","content":{"user_id":"@a:x.test","device_id":"D",
		"stream_id":7,"prev_id":[],"deleted":false,"device_display_name":"phone","keys":`+string(keys)+`}}`, string(edu))

	edu, err = DeviceListUpdateEDU("@a:x.test", 9, 7, DeviceUpdate{DeviceID: "D", Deleted: true, DisplayName: "phone", Keys: keys})
	require.NoError(t, err)
	require.JSONEq(t, `{"edu_type":"m.device_list_update","content":{"user_id":"@a:x.test","device_id":"D",
		"stream_id":9,"prev_id":[7],"deleted":true}}`, string(edu), "a deletion carries no keys")

	edu, err = SigningKeyUpdateEDU("@a:x.test", json.RawMessage(`{"k":1}`), nil)
	require.NoError(t, err)
	require.JSONEq(t, `{"edu_type":"m.signing_key_update","content":{"user_id":"@a:x.test","master_key":{"k":1}}}`, string(edu))
}

func TestDecideRemoteUpdate(t *testing.T) {
	fresh := RemoteState{StreamID: 10, AppliedIDs: []int64{8, 9, 10}}
	for _, tc := range []struct {
		name string
		st   RemoteState
		u    RemoteUpdate
		want RemoteOutcome
	}{
		{"next in the chain", fresh, RemoteUpdate{StreamID: 11, PrevIDs: []int64{10}}, RemoteApplied},
		{"several known prev_ids", fresh, RemoteUpdate{StreamID: 12, PrevIDs: []int64{9, 10}}, RemoteApplied},
		{"a replay", fresh, RemoteUpdate{StreamID: 10, PrevIDs: []int64{9}}, RemoteIgnored},
		{"older than the cache", fresh, RemoteUpdate{StreamID: 3, PrevIDs: []int64{2}}, RemoteIgnored},
		{"a gap", fresh, RemoteUpdate{StreamID: 13, PrevIDs: []int64{12}}, RemoteResync},
		{"one unknown of several", fresh, RemoteUpdate{StreamID: 13, PrevIDs: []int64{10, 12}}, RemoteResync},
		{"an old id not remembered", fresh, RemoteUpdate{StreamID: 13, PrevIDs: []int64{10, 5}}, RemoteResync},
		{"no prev_id", fresh, RemoteUpdate{StreamID: 11}, RemoteResync},
		{"stale", RemoteState{StreamID: 10, Stale: true}, RemoteUpdate{StreamID: 11, PrevIDs: []int64{10}}, RemoteResync},
		{"never fetched", RemoteState{Stale: true}, RemoteUpdate{StreamID: 1}, RemoteResync},
	} {
		require.Equal(t, tc.want, DecideRemoteUpdate(tc.st, tc.u), tc.name)
	}

	ids := []int64{}
	for i := range int64(25) {
		ids = PushApplied(ids, i)
	}
	require.Len(t, ids, MaxAppliedIDs)
	require.Equal(t, int64(24), ids[len(ids)-1])
	require.Equal(t, int64(25-MaxAppliedIDs), ids[0])
}

func TestSnapshotChecksTheAnswer(t *testing.T) {
	sid := int64(4)
	good := func(dev string) json.RawMessage {
		return json.RawMessage(`{"user_id":"@a:x.test","device_id":"` + dev + `","keys":{}}`)
	}
	l, err := snapshot("@a:x.test", userDevicesJSON{UserID: "@a:x.test", StreamID: &sid, Devices: []userDeviceJSON{
		{DeviceID: "B", Keys: good("B"), DisplayName: "b"},
		{DeviceID: "A", Keys: good("A")},
		{DeviceID: "A", Keys: good("A")},                                  // duplicate
		{DeviceID: "C", Keys: good("X")},                                  // keys of another device
		{DeviceID: "D", Keys: json.RawMessage(`{"user_id":"@m:x.test"}`)}, // of another user
		{DeviceID: ""},
		{DeviceID: "E"}, // no keys
	}, MasterKey: json.RawMessage(`{"user_id":"@a:x.test","keys":{}}`)})
	require.NoError(t, err)
	require.Equal(t, int64(4), l.StreamID)
	var ids []string
	for _, d := range l.Devices {
		ids = append(ids, d.DeviceID)
	}
	require.Equal(t, []string{"A", "B", "E"}, ids, "sorted, checked, deduplicated")
	require.Equal(t, "b", l.Devices[1].DisplayName)
	require.Nil(t, l.Devices[2].Keys)
	require.NotNil(t, l.MasterKey)

	_, err = snapshot("@a:x.test", userDevicesJSON{UserID: "@b:x.test", StreamID: &sid})
	require.Error(t, err, "an answer about someone else")
	_, err = snapshot("@a:x.test", userDevicesJSON{UserID: "@a:x.test"})
	require.Error(t, err, "no stream_id")
	_, err = snapshot("@a:x.test", userDevicesJSON{UserID: "@a:x.test", StreamID: &sid, MasterKey: json.RawMessage(`{"user_id":"@b:x.test"}`)})
	require.Error(t, err, "a master key of someone else")
}
