package inbox

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPlanStale(t *testing.T) {
	krq := func(action, id string) json.RawMessage {
		b, _ := json.Marshal(map[string]string{"action": action, "request_id": id, "requesting_device_id": "D"})
		return b
	}
	row := func(nid, pos int64, sender, typ string, c json.RawMessage) StaleRow {
		return StaleRow{UserID: "@u:x", NID: nid, Pos: pos, Sender: sender, Type: typ, Content: c}
	}
	unseen := row(1, 10, "@a:x", TypeRoomKeyRequest, krq("request", "r1"))
	unseen.Unseen = true
	pending := []StaleRow{
		unseen,
		row(2, 11, "@a:x", TypeRoomKeyRequest, krq("request", "r1")),
		row(1, 12, "@a:x", TypeRoomKeyRequest, krq("request_cancellation", "r9")),
	}
	rows := []StaleRow{
		row(1, 0, "@a:x", TypeRoomKeyRequest, krq("request_cancellation", "r1")), // drops pos 10 and itself
		row(1, 0, "@a:x", TypeRoomKeyRequest, krq("request", "r1")),              // kept: after the cancellation
		row(1, 0, "@a:x", TypeRoomKeyRequest, krq("request", "r1")),              // replaces the previous new row
		row(3, 0, "@a:x", TypeRoomKeyRequest, krq("request", "r2")),
		row(3, 0, "@a:x", TypeRoomKeyRequest, krq("request_cancellation", "r2")), // drops new row 3 and itself
		row(2, 0, "@b:x", TypeRoomKeyRequest, krq("request_cancellation", "r1")), // another sender: kept
		row(1, 0, "@a:x", "m.room.encrypted", krq("request_cancellation", "r1")), // never inspected
		row(1, 0, "@a:x", TypeRoomKeyRequest, []byte(`{"action":`)),              // not JSON: kept
		row(2, 0, "@a:x", TypeRoomKeyRequest, krq("request_cancellation", "r1")), // drops pos 11, which B may have seen: kept
	}
	require.Len(t, StaleTargets(rows), 4)
	p := PlanStale(pending, rows)
	require.Equal(t, []int64{10, 11}, positions(p.Delete))
	require.Equal(t, []bool{true, true, false, true, true, false, false, false, false}, p.Skip)
	require.Equal(t, 2, p.Skipped(0, len(rows)), "two cancellations dropped themselves")
	require.Equal(t, map[string]int{DropKeyRequestCancelled: 5, DropKeyRequestRepeated: 1}, p.Drops(0, len(rows)))
	require.Equal(t, map[string]int{DropKeyRequestCancelled: 2}, p.Drops(0, 1))
}

func positions(rows []StaleRow) []int64 {
	var out []int64
	for _, r := range rows {
		out = append(out, r.Pos)
	}
	return out
}

func TestBuildAcceptMarksStale(t *testing.T) {
	for _, tc := range []struct {
		typ, content string
		stale        bool
	}{
		{TypeRoomKeyRequest, `{"action":"request","request_id":"r","requesting_device_id":"D"}`, true},
		{TypeRoomKeyRequest, `{"action":"request_cancellation","request_id":"r","requesting_device_id":"D"}`, true},
		{TypeSecretRequest, `{"action":"request_cancellation","request_id":"r","requesting_device_id":"D"}`, true},
		{TypeSecretRequest, `{"action":"request","request_id":"r","requesting_device_id":"D"}`, false},
		{TypeVerificationCancel, `{"transaction_id":"t","code":"m.user"}`, true},
		{TypeVerificationRequest, `{"transaction_id":"t"}`, false},
		{"m.room.encrypted", `{"action":"request_cancellation","request_id":"r","requesting_device_id":"D"}`, false},
		{TypeRoomKeyRequest, `{"action":"request"}`, false},
	} {
		a, err := BuildAccept("x", TxnKey{UserID: "@a:x", DeviceID: "A", EventType: tc.typ, TxnID: "1"},
			Messages{"@b:x": {"B": json.RawMessage(tc.content)}})
		require.NoError(t, err)
		require.Equal(t, tc.stale, a.Stale, "%s %s", tc.typ, tc.content)
	}
}
