package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/servertest"
)

// TestStaleRequestsDropped: MSC3944 through the router. Behind a backlog
// the device has not been given, a cancelled key request, a cancelled
// verification request, a cancelled secret request and a key request sent
// again never reach the device. A request the device was given is deleted
// when cancelled, but its cancellation is delivered. Each drop is counted
// by rule.
func TestStaleRequestsDropped(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		keyReq := func(action, id string, n int) map[string]map[string]any {
			return map[string]map[string]any{bob: {"B1": map[string]any{
				"action": action, "request_id": id, "requesting_device_id": "A1", "n": n}}}
		}
		verif := func(id string, n int) map[string]map[string]any {
			return map[string]map[string]any{bob: {"B1": map[string]any{"transaction_id": id, "n": n}}}
		}
		in.Send(t, "tok-alice", "m.room_key_request", "1", keyReq("request", "r1", 1))
		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{1}, ns(s.ToDevice.Events))
		in.Send(t, "tok-alice", "m.room_key_request", "2", keyReq("request_cancellation", "r1", 2))
		s = in.Sync(t, "tok-bob", s.NextBatch, 0)
		require.Equal(t, []int{2}, ns(s.ToDevice.Events), "the device was given the request: it gets the cancellation")

		// A backlog the device has not been given yet.
		for i := range inbox.SeenHorizon + 1 {
			a, err := inbox.BuildAccept("localhost", inbox.TxnKey{UserID: alice, DeviceID: "A1", EventType: "m.backlog", TxnID: fmt.Sprint(i)},
				inbox.Messages{bob: {"B1": []byte(`{"n":1000}`)}})
			require.NoError(t, err)
			_, err = in.Backend().Inbox().Accept(context.Background(), a)
			require.NoError(t, err)
		}
		in.Send(t, "tok-alice", "m.room_key_request", "3", keyReq("request", "r2", 3))
		in.Send(t, "tok-alice", "m.t", "4", map[string]map[string]any{bob: {"B1": map[string]any{"n": 4}}})
		in.Send(t, "tok-alice", "m.room_key_request", "5", keyReq("request_cancellation", "r2", 5))
		in.Send(t, "tok-alice", "m.room_key_request", "6", keyReq("request", "r2", 6))
		in.Send(t, "tok-alice", "m.room_key_request", "7", keyReq("request", "r2", 7))
		in.Send(t, "tok-alice", "m.key.verification.request", "8", verif("t1", 8))
		in.Send(t, "tok-alice", "m.key.verification.cancel", "9", verif("t1", 9))
		in.Send(t, "tok-alice", "m.secret.request", "10", keyReq("request", "s1", 10))
		in.Send(t, "tok-alice", "m.secret.request", "11", keyReq("request_cancellation", "s1", 11))

		var got []int
		for i := 0; ; i++ {
			require.Less(t, i, 10)
			s = in.Sync(t, "tok-bob", s.NextBatch, 0)
			if len(s.ToDevice.Events) == 0 {
				break
			}
			for _, n := range ns(s.ToDevice.Events) {
				if n != 1000 {
					got = append(got, n)
				}
			}
		}
		require.Equal(t, []int{4, 7}, got)

		for reason, want := range map[string]float64{
			"key_request_cancelled":    3,
			"key_request_repeated":     1,
			"verification_cancelled":   2,
			"secret_request_cancelled": 2,
		} {
			require.Equal(t, want, counterValue(t, in, "todeviced_messages_dropped_total", "reason", reason), reason)
		}
	})
}

// TestStaleAtSyncDropped: MSC3944's sync-time rules through the router. A
// verification request more than ten minutes old and a key or secret
// request whose requesting device was deleted are left out, counted, and
// acknowledged with the batch; everything around them is delivered.
func TestStaleAtSyncDropped(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, alice, "A2", "tok-alice2")
		in.PutDevice(t, bob, "B1", "tok-bob")
		to := func(c map[string]any) map[string]map[string]any { return map[string]map[string]any{bob: {"B1": c}} }
		now := time.Now().UnixMilli()
		in.Send(t, "tok-alice", "m.key.verification.request", "1", to(map[string]any{"transaction_id": "t1", "timestamp": now - 11*60*1000, "n": 1}))
		in.Send(t, "tok-alice", "m.key.verification.request", "2", to(map[string]any{"transaction_id": "t2", "timestamp": now, "n": 2}))
		in.Send(t, "tok-alice", "m.room_key_request", "3", to(map[string]any{"action": "request", "request_id": "r1", "requesting_device_id": "A2", "n": 3}))
		in.Send(t, "tok-alice", "m.room_key_request", "4", to(map[string]any{"action": "request", "request_id": "r2", "requesting_device_id": "A1", "n": 4}))
		in.Send(t, "tok-alice", "m.secret.request", "5", to(map[string]any{"action": "request", "request_id": "s1", "requesting_device_id": "A2", "n": 5}))
		in.Send(t, "tok-alice", "m.room_key_request", "6", to(map[string]any{"action": "request_cancellation", "request_id": "r3", "requesting_device_id": "A2", "n": 6}))
		in.Send(t, "tok-alice", "m.room.encrypted", "7", to(map[string]any{"requesting_device_id": "A2", "action": "request", "request_id": "x", "n": 7}))
		require.Equal(t, http.StatusOK, in.DeleteDevice(t, alice, "A2").Status)

		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{2, 4, 6, 7}, ns(s.ToDevice.Events))
		s = in.Sync(t, "tok-bob", s.NextBatch, 0)
		require.Empty(t, s.ToDevice.Events, "the dropped rows were acknowledged with the batch")
		require.Equal(t, 1.0, counterValue(t, in, "todeviced_messages_dropped_total", "reason", "verification_request_expired"))
		require.Equal(t, 2.0, counterValue(t, in, "todeviced_messages_dropped_total", "reason", "requesting_device_gone"))
	})
}
