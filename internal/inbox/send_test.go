package inbox

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/matrix"
)

func requireMxErr(t *testing.T, err error, code matrix.Code, status int) {
	t.Helper()
	e, ok := matrix.AsError(err)
	require.True(t, ok, "want a Matrix error %s, got %v", code, err)
	require.Equal(t, code, e.Code, e.Message)
	require.Equal(t, status, e.Status)
}

func TestDecodeSendBody(t *testing.T) {
	cases := []struct {
		body   string
		code   matrix.Code
		status int
	}{
		{`not json`, matrix.NotJSON, 400},
		{`{"messages": {`, matrix.NotJSON, 400},
		{"{\"messages\": {\"@a:b\": {\"D\": {\"x\": \"\xff\"}}}}", matrix.NotJSON, 400},
		{`[]`, matrix.BadJSON, 400},
		{`"str"`, matrix.BadJSON, 400},
		{`null`, matrix.BadJSON, 400},
		{`{}`, matrix.MissingParam, 400},
		{`{"message": {}}`, matrix.MissingParam, 400},
		{`{"messages": []}`, matrix.BadJSON, 400},
		{`{"messages": null}`, matrix.BadJSON, 400},
		{`{"messages": "x"}`, matrix.BadJSON, 400},
		{`{"messages": {"@a:b": []}}`, matrix.BadJSON, 400},
		{`{"messages": {"@a:b": {"D": "text"}}}`, matrix.BadJSON, 400},
		{`{"messages": {"@a:b": {"D": [1]}}}`, matrix.BadJSON, 400},
		{`{"messages": {"@a:b": {"D": null}}}`, matrix.BadJSON, 400},
	}
	for _, c := range cases {
		_, err := DecodeSendBody([]byte(c.body))
		requireMxErr(t, err, c.code, c.status)
	}
	msgs, err := DecodeSendBody([]byte(`{"messages": {"@a:b": {"D": { "k" : [1, 2] }}}, "extra": 1}`))
	require.NoError(t, err)
	require.Equal(t, `{"k":[1,2]}`, string(msgs["@a:b"]["D"]), "content is stored compact")
	msgs, err = DecodeSendBody([]byte(`{"messages": {}}`))
	require.NoError(t, err)
	require.Empty(t, msgs)
}

func key(id string) TxnKey {
	return TxnKey{UserID: "@s:here", DeviceID: "DEV", EventType: "m.test", TxnID: id}
}

func TestBuildAcceptValidation(t *testing.T) {
	ok := Messages{"@u:here": {"D": json.RawMessage(`{}`)}}
	_, err := BuildAccept("here", TxnKey{UserID: "@s:here", DeviceID: "D", EventType: strings.Repeat("t", 256), TxnID: "1"}, ok)
	requireMxErr(t, err, matrix.TooLarge, 413)
	_, err = BuildAccept("here", TxnKey{UserID: "@s:here", DeviceID: "D", EventType: strings.Repeat("t", 255), TxnID: "1"}, ok)
	require.NoError(t, err, "255 bytes is allowed")
	_, err = BuildAccept("here", TxnKey{UserID: "@s:here", DeviceID: "D", EventType: "m", TxnID: strings.Repeat("x", 256)}, ok)
	requireMxErr(t, err, matrix.TooLarge, 413)

	for _, bad := range []string{"alice", "@alice", "@:here", "@al ice:here", "@a:bad_host"} {
		_, err := BuildAccept("here", key("1"), Messages{"@u:here": {"D": json.RawMessage(`{}`)}, bad: {"D": json.RawMessage(`{}`)}})
		requireMxErr(t, err, matrix.InvalidParam, 400)
		require.Contains(t, err.Error(), bad, "the error names the bad user id")
	}

	big := json.RawMessage(`{"k":"` + strings.Repeat("a", MaxEDUBytes) + `"}`)
	_, err = BuildAccept("here", key("1"), Messages{"@u:here": {"D": big}})
	requireMxErr(t, err, matrix.TooLarge, 413)
	_, err = BuildAccept("here", key("1"), Messages{"@u:elsewhere": {"D": big}})
	requireMxErr(t, err, matrix.TooLarge, 413)
}

func TestBuildAcceptRouting(t *testing.T) {
	c := json.RawMessage(`{"a":1}`)
	a, err := BuildAccept("here", key("1"), Messages{
		"@b:here":   {"D2": c, "D1": c},
		"@a:here":   {"*": c},
		"@m:here":   {"*": c, "X": c},
		"@r:there":  {"*": c, "R1": c},
		"@q:there":  {"Q": c},
		"@z:third":  {"Z": c},
		"@h:here:1": {"H": c}, // another server (port differs)
	})
	require.NoError(t, err)
	var local []string
	for _, m := range a.Local {
		local = append(local, m.UserID+"/"+m.DeviceID)
	}
	require.Equal(t, []string{"@a:here/*", "@b:here/D1", "@b:here/D2", "@m:here/X"}, local, "sorted; * only alone")
	require.Equal(t, 1, a.Unaddressable)
	var dests []string
	for _, e := range a.Remote {
		dests = append(dests, e.Destination)
	}
	require.Equal(t, []string{"here:1", "there", "third"}, dests)
	var edu struct {
		Content struct {
			Messages map[string]map[string]json.RawMessage `json:"messages"`
		} `json:"content"`
	}
	require.NoError(t, json.Unmarshal(a.Remote[1].EDU, &edu))
	require.Len(t, edu.Content.Messages["@r:there"], 2, "remote device maps are forwarded as given")
	require.Equal(t, 3, a.Remote[1].Messages)
}

func TestSplitFillsEDUsExactly(t *testing.T) {
	// 40 users × 25 devices × ~1 KiB: several EDUs, each at most 64 KiB,
	// every message exactly once.
	msgs := Messages{}
	want := map[string]bool{}
	for u := range 40 {
		user := fmt.Sprintf("@user%02d:there", u)
		msgs[user] = map[string]json.RawMessage{}
		for d := range 25 {
			dev := fmt.Sprintf("DEVICE%02d", d)
			msgs[user][dev] = json.RawMessage(fmt.Sprintf(`{"ciphertext":"%s"}`, strings.Repeat("x", 900+u+d)))
			want[user+"/"+dev] = true
		}
	}
	a, err := BuildAccept("here", key("1"), msgs)
	require.NoError(t, err)
	require.Greater(t, len(a.Remote), 10)
	got := map[string]bool{}
	ids := map[string]bool{}
	total := 0
	for i, e := range a.Remote {
		require.LessOrEqual(t, len(e.EDU), MaxEDUBytes, "EDU %d", i)
		if i < len(a.Remote)-1 {
			require.Greater(t, len(e.EDU), MaxEDUBytes-2000, "EDU %d is filled before a new one starts", i)
		}
		var edu struct {
			EDUType string `json:"edu_type"`
			Content struct {
				MessageID string                                `json:"message_id"`
				Sender    string                                `json:"sender"`
				Type      string                                `json:"type"`
				Messages  map[string]map[string]json.RawMessage `json:"messages"`
			} `json:"content"`
		}
		require.NoError(t, json.Unmarshal(e.EDU, &edu))
		require.Equal(t, "m.direct_to_device", edu.EDUType)
		require.Equal(t, e.MessageID, edu.Content.MessageID)
		require.False(t, ids[e.MessageID], "message ids are unique")
		ids[e.MessageID] = true
		require.Equal(t, "@s:here", edu.Content.Sender)
		n := 0
		for u, devs := range edu.Content.Messages {
			for d, c := range devs {
				require.False(t, got[u+"/"+d], "a message appears in one EDU only")
				got[u+"/"+d] = true
				require.JSONEq(t, string(msgs[u][d]), string(c))
				n++
			}
		}
		require.Equal(t, e.Messages, n)
		total += n
	}
	require.Equal(t, want, got)
	require.Equal(t, 1000, total)
}

func TestSplitLargestSingleMessage(t *testing.T) {
	// Grow the content until one message exactly fills an EDU: it is
	// accepted; one byte more is refused.
	shape := newEDUShape("@s:here", "m.test")
	base := shape.sizeAlone("@u:there", "D", json.RawMessage(`{"k":""}`))
	fill := json.RawMessage(`{"k":"` + strings.Repeat("a", MaxEDUBytes-base) + `"}`)
	a, err := BuildAccept("here", key("1"), Messages{"@u:there": {"D": fill}})
	require.NoError(t, err)
	require.Len(t, a.Remote, 1)
	require.Len(t, a.Remote[0].EDU, MaxEDUBytes)
	over := json.RawMessage(`{"k":"` + strings.Repeat("a", MaxEDUBytes-base+1) + `"}`)
	_, err = BuildAccept("here", key("1"), Messages{"@u:there": {"D": over}})
	requireMxErr(t, err, matrix.TooLarge, 413)
}

// TestSplitSizeWithEscapedIDs: an EDU is as long as split counted it, also
// when ids need escapes (a localpart may hold any printable ASCII).
func TestSplitSizeWithEscapedIDs(t *testing.T) {
	txn := TxnKey{UserID: `@s"<:here`, DeviceID: "D", EventType: "m.test", TxnID: "1"}
	user := `@a"<&\\b:there`
	c := json.RawMessage(`{"k":1}`)
	a, err := BuildAccept("here", txn, Messages{user: {"D": c}})
	require.NoError(t, err)
	require.Len(t, a.Remote, 1)
	shape := newEDUShape(txn.UserID, txn.EventType)
	require.Len(t, a.Remote[0].EDU, shape.sizeAlone(user, "D", c))
	var edu struct {
		Content struct {
			Sender   string                                `json:"sender"`
			Messages map[string]map[string]json.RawMessage `json:"messages"`
		} `json:"content"`
	}
	require.NoError(t, json.Unmarshal(a.Remote[0].EDU, &edu))
	require.Equal(t, txn.UserID, edu.Content.Sender)
	require.JSONEq(t, string(c), string(edu.Content.Messages[user]["D"]))
}

// TestBuildAcceptHostile: identifiers no backend could store or a peer
// could verify, local users in another case, and content canonical JSON
// cannot carry for a remote recipient are refused before anything is stored.
func TestBuildAcceptHostile(t *testing.T) {
	c := json.RawMessage(`{}`)
	for name, tc := range map[string]struct {
		txn  TxnKey
		msgs Messages
		code matrix.Code
		says string
	}{
		"NUL in event type":         {TxnKey{UserID: "@s:here", DeviceID: "D", EventType: "m.t\x00", TxnID: "1"}, Messages{"@u:here": {"D": c}}, matrix.InvalidParam, "event type"},
		"invalid UTF-8 txn id":      {TxnKey{UserID: "@s:here", DeviceID: "D", EventType: "m.t", TxnID: "\xff"}, Messages{"@u:here": {"D": c}}, matrix.InvalidParam, "transaction id"},
		"NUL device, remote user":   {key("1"), Messages{"@u:there": {"X\x00": c}}, matrix.InvalidParam, "device id"},
		"control char local device": {key("1"), Messages{"@u:here": {"a\nb": c}}, matrix.InvalidParam, "device id"},
		"local server in capitals":  {key("1"), Messages{"@bob:HERE": {"D": c}}, matrix.InvalidParam, "use \"here\""},
		"float for remote":          {key("1"), Messages{"@u:there": {"D": json.RawMessage(`{"f":1.5}`)}}, matrix.BadJSON, "1.5"},
		"2^53 for remote":           {key("1"), Messages{"@u:there": {"D": json.RawMessage(`{"n":9007199254740992}`)}}, matrix.BadJSON, "9007199254740992"},
	} {
		_, err := BuildAccept("here", tc.txn, tc.msgs)
		e, ok := matrix.AsError(err)
		if !ok || e.Code != tc.code || !strings.Contains(e.Message, tc.says) {
			t.Errorf("%s: got %v, want %s saying %q", name, err, tc.code, tc.says)
		}
	}
	// The same float to a local user is fine: /sync carries any JSON number.
	a, err := BuildAccept("here", key("1"), Messages{"@u:here": {"D": json.RawMessage(`{"f":1.5}`)}})
	require.NoError(t, err)
	require.Len(t, a.Local, 1)
}
