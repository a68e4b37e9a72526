package loadgen

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
)

func TestBodyIsWhatTodevicedAccepts(t *testing.T) {
	cfg := Defaults()
	cfg.InternalSecret = "s"
	cfg.Users, cfg.DevicesPerUser, cfg.Fanout, cfg.MessageBytes = 3, 2, 4, 300
	r, err := New(cfg)
	require.NoError(t, err)
	for u := range cfg.Users {
		for d := range cfg.DevicesPerUser {
			r.devices = append(r.devices, device{userID: r.userID(u), deviceID: "LD" + string(rune('0'+d))})
		}
	}
	recipients := []uint32{0, 1, 3, 5} // user 0 twice, users 1 and 2 once
	body := r.appendBody(nil, 7, 42, recipients, 1234567890)

	// The server's own decoder accepts it, with one content per recipient.
	msgs, err := inbox.DecodeSendBody(body)
	require.NoError(t, err)
	require.Len(t, msgs, 3)
	for _, d := range recipients {
		dev := r.devices[d]
		raw, ok := msgs[dev.userID][dev.deviceID]
		require.True(t, ok, "%s/%s", dev.userID, dev.deviceID)
		assert.Len(t, raw, cfg.MessageBytes, "content padded to --message-bytes")
		ev := syncEvent{Sender: r.devices[r.senderDevice(7)].userID, Type: EventType, Content: raw}
		var c Content
		require.Empty(t, r.decode(int(d), &ev, &c))
		assert.Equal(t, Content{Run: r.runID, Sender: 7, Seq: 42, Device: d, SentNS: 1234567890}, c)
	}
}

func TestDecodeRejectsForeignAndMisrouted(t *testing.T) {
	cfg := Defaults()
	cfg.InternalSecret = "s"
	cfg.Users, cfg.DevicesPerUser, cfg.Fanout = 2, 1, 1
	r, err := New(cfg)
	require.NoError(t, err)
	r.devices = []device{{userID: r.userID(0), deviceID: "LD0"}, {userID: r.userID(1), deviceID: "LD0"}}
	content := appendContent(nil, r.runID, MsgID{Sender: 0, Seq: 1, Device: 1}, 1, 0, "")
	var c Content
	ev := syncEvent{Sender: r.devices[0].userID, Type: EventType, Content: content}
	assert.Empty(t, r.decode(1, &ev, &c))
	assert.Contains(t, r.decode(0, &ev, &c), "arrived at device 0")
	ev.Sender = "@someone:else"
	assert.Contains(t, r.decode(1, &ev, &c), "has sender @someone:else")
	ev = syncEvent{Sender: r.devices[0].userID, Type: "m.other", Content: content}
	assert.Contains(t, r.decode(1, &ev, &c), "event type")
	ev = syncEvent{Sender: r.devices[0].userID, Type: EventType, Content: json.RawMessage(`{"load_run":"other"}`)}
	assert.Contains(t, r.decode(1, &ev, &c), "message of run")
}

func TestConfigValidate(t *testing.T) {
	cfg := Defaults()
	assert.ErrorContains(t, cfg.Validate(), "--internal-secret")
	cfg.InternalSecret = "s"
	require.NoError(t, cfg.Validate())
	cfg.Fanout = cfg.Devices() + 1
	assert.ErrorContains(t, cfg.Validate(), "--fanout")
	cfg = Defaults()
	cfg.InternalSecret = "s"
	cfg.Duration, cfg.Messages = 0, 0
	assert.ErrorContains(t, cfg.Validate(), "--duration or --messages")
	cfg.Messages = 10
	cfg.Baseline = true
	assert.ErrorContains(t, cfg.Validate(), "--database-url")
}
