package httpapi_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// TestKeyRequestRateLimit: through the router, room key requests to other
// users over the sending device's limit are dropped and counted while the
// send answers 200; requests to the sender's own devices, other event
// types and other sending devices are not touched.
func TestKeyRequestRateLimit(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := keyRequestInstance(t, b)
		in.PutDevice(t, alice, "A2", "tok-alice2")
		in.PutDevice(t, bob, "B1", "tok-bob")
		// One token per recipient user: each send to bob takes one.
		in.Send(t, "tok-alice", "m.room_key_request", "1", map[string]map[string]any{bob: {"B1": keyRequest(1)}})
		in.Send(t, "tok-alice", "m.room_key_request", "2", map[string]map[string]any{bob: {"B1": keyRequest(2)}, alice: {"A2": keyRequest(2)}})
		in.Send(t, "tok-alice", "m.room_key_request", "3", map[string]map[string]any{bob: {"B1": keyRequest(3)}, alice: {"A2": keyRequest(3)}})
		in.Send(t, "tok-alice", "m.room_key_request", "4", map[string]map[string]any{bob: {"B1": keyRequest(4)}})
		in.Send(t, "tok-alice", "m.other", "5", map[string]map[string]any{bob: {"B1": map[string]any{"n": 5}}})
		in.Send(t, "tok-alice2", "m.room_key_request", "6", map[string]map[string]any{bob: {"B1": keyRequest(6)}})

		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{1, 2, 5, 6}, ns(s.ToDevice.Events), "the third and fourth requests from A1 are over the limit")
		s = in.Sync(t, "tok-alice2", "", 0)
		require.Equal(t, []int{2, 3}, ns(s.ToDevice.Events), "requests to the sender's own devices are not limited")
		require.Equal(t, 2.0, counterValue(t, in, "todeviced_messages_dropped_total", "reason", "key_request_rate_limited"))
	})
}

// A send that stores nothing pays nothing: a retried transaction id (the
// first request paid), a request refused as bad input, and a send whose
// remembered token turned out to be revoked (redone once as the device the
// token names now) give back the tokens they took.
func TestKeyRequestRateLimitChargesStoredSendsOnly(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := keyRequestInstance(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		in.Send(t, "tok-alice", "m.room_key_request", "1", map[string]map[string]any{bob: {"B1": keyRequest(1)}})
		for range 3 {
			in.Send(t, "tok-alice", "m.room_key_request", "1", map[string]map[string]any{bob: {"B1": keyRequest(1)}})
		}
		r := in.Do(t, "PUT", "/_matrix/client/v3/sendToDevice/m.room_key_request/bad", "tok-alice",
			map[string]any{"messages": map[string]any{bob: map[string]any{"B1": keyRequest(9)}, "bob": map[string]any{"X": keyRequest(9)}}})
		require.Equal(t, 400, r.Status, "%s", r.Body)

		// The device is deleted and made again with the same id and
		// token: this replica still remembers the old device for the
		// token, so the next send's guard fails and it is redone as the
		// new device, under the same (user, device) limit.
		require.Equal(t, 200, in.DeleteDevice(t, alice, "A1").Status)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.Send(t, "tok-alice", "m.room_key_request", "2", map[string]map[string]any{bob: {"B1": keyRequest(2)}})

		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{1, 2}, ns(s.ToDevice.Events), "the second stored request had a token left")
		require.Zero(t, counterValue(t, in, "todeviced_messages_dropped_total", "reason", "key_request_rate_limited"))
		in.Send(t, "tok-alice", "m.room_key_request", "3", map[string]map[string]any{bob: {"B1": keyRequest(3)}})
		require.Equal(t, []int{1, 2}, ns(in.Sync(t, "tok-bob", "", 0).ToDevice.Events), "and that was the last")
		require.Equal(t, 1.0, counterValue(t, in, "todeviced_messages_dropped_total", "reason", "key_request_rate_limited"))
	})
}

// keyRequestInstance is an instance whose key-request limit is a burst of
// two that does not refill during a test, with alice's A1.
func keyRequestInstance(t *testing.T, b servertest.Backend) *servertest.Instance {
	cfg := servertest.Config(b.NewURL(t))
	cfg.KeyRequestRateLimit, cfg.KeyRequestBurst = 0.0001, 2
	in := servertest.Start(t, cfg, server.Options{})
	in.PutDevice(t, alice, "A1", "tok-alice")
	return in
}

// keyRequest is A1's room key request number n.
func keyRequest(n int) map[string]any {
	return map[string]any{"action": "request", "request_id": "r" + string(rune('a'+n)), "requesting_device_id": "A1", "n": n}
}
