package federation

import (
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPDUEventIDs(t *testing.T) {
	// A room version 4 event and its id, as the reference implementation
	// gomatrixserverlib computes it (eventversion_test.go); versions 4 to
	// 10 redact m.room.create alike.
	create := `{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"}, "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re", "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"}, "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}`
	ids, err := PDUEventIDs(json.RawMessage(create))
	require.NoError(t, err)
	require.Len(t, ids, 2, "versions 11+ keep all of m.room.create's content: another id")
	require.Equal(t, "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438", ids[0])

	// What redaction removes does not change the id.
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(create), &obj))
	obj["unsigned"] = map[string]any{"age": 1}
	obj["signatures"] = map[string]any{}
	obj["extra"] = "ignored"
	obj["content"].(map[string]any)["room_version"] = "11"
	changed, err := json.Marshal(obj)
	require.NoError(t, err)
	again, err := PDUEventIDs(changed)
	require.NoError(t, err)
	require.Equal(t, ids[0], again[0])
	require.NotEqual(t, ids[1], again[1], "under version 11 rules the content counts")

	legacy, err := PDUEventIDs(json.RawMessage(`{"event_id":"$abc:example.org","type":"m.room.message"}`))
	require.NoError(t, err)
	require.Equal(t, []string{"$abc:example.org"}, legacy, "versions 1 and 2 carry their id")

	message := `{"type":"m.room.message","room_id":"!r:a.test","sender":"@a:a.test","content":{"body":"hi"},"depth":3,"origin_server_ts":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"}}`
	same, err := PDUEventIDs(json.RawMessage(message))
	require.NoError(t, err)
	require.Len(t, same, 1, "one id when the rules agree")

	_, err = PDUEventIDs(json.RawMessage(`[1]`))
	require.Error(t, err)
	_, err = PDUEventIDs(json.RawMessage(`{"type":"m.room.message","depth":1.5}`))
	require.Error(t, err, "not canonical JSON: no id")
}

func TestFeedTokenRoundTrip(t *testing.T) {
	tok := feedToken{epoch: "e1", destination: "b.test:8448", sources: []feedSource{
		{source: "devicelist", positions: []int64{7}}, {source: "todevice", positions: []int64{1, 99, 1 << 40}},
	}}
	got, err := parseFeedToken(tok.String())
	require.NoError(t, err)
	require.Equal(t, tok, got)
	for _, bad := range []string{"", "f1.", "f2.", "f9." + tok.String()[3:], "f1." + tok.String()[3:], "f2.!!!", tok.String() + "!"} {
		_, err := parseFeedToken(bad)
		require.Error(t, err, bad)
	}

	// A token of the first version (one source), handed out before an
	// upgrade, is still understood.
	v1 := "f1." + base64.RawURLEncoding.EncodeToString([]byte("e1\nb.test\ntodevice\n1,2r"))
	got, err = parseFeedToken(v1)
	require.NoError(t, err)
	require.Equal(t, feedToken{epoch: "e1", destination: "b.test", sources: []feedSource{{source: "todevice", positions: []int64{1, 99}}}}, got)
}
