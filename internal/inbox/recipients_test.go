package inbox

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// Invariant 6 as one function: message order, "*" in nid order, a "*" to a
// user without devices and an unknown device each count once as unknown.
func TestRecipientsExpand(t *testing.T) {
	r := NewRecipients(3)
	r.Add(1, "@a:x", "A1")
	r.Add(2, "@b:x", "B1")
	r.Add(3, "@a:x", "A2")
	type row struct {
		user string
		nid  int64
	}
	var got []row
	unknown := r.Expand([]LocalMessage{
		{UserID: "@b:x", DeviceID: "B1", Content: json.RawMessage(`{}`)},
		{UserID: "@a:x", DeviceID: AllDevices, Content: json.RawMessage(`{}`)},
		{UserID: "@c:x", DeviceID: AllDevices, Content: json.RawMessage(`{}`)},
		{UserID: "@a:x", DeviceID: "GONE", Content: json.RawMessage(`{}`)},
	}, func(user string, nid int64, _ json.RawMessage) { got = append(got, row{user, nid}) })
	require.Equal(t, []row{{"@b:x", 2}, {"@a:x", 1}, {"@a:x", 3}}, got, "message order, * in nid order")
	require.Equal(t, 2, unknown, "a * to a user without devices and an unknown device")

	// A device added after a "*" was expanded is in the next "*".
	r.Add(4, "@a:x", "A3")
	got = nil
	r.Expand([]LocalMessage{{UserID: "@a:x", DeviceID: AllDevices}}, func(user string, nid int64, _ json.RawMessage) { got = append(got, row{user, nid}) })
	require.Equal(t, []row{{"@a:x", 1}, {"@a:x", 3}, {"@a:x", 4}}, got)

	var none *Recipients
	require.Equal(t, 1, none.Expand([]LocalMessage{{UserID: "@a:x", DeviceID: "A1"}}, nil), "no devices found: unknown")
}
