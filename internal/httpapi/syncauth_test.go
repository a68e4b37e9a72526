package httpapi_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// These tests are of /sync's speculative authentication (DESIGN invariant
// 9): a token this replica authenticated before is taken for its device
// without a round trip, and the sync's own round trip checks it. A revoked
// token must still stop at once, delete nothing and read nothing.

// cached says whether in would start a /sync with token without reading it.
func cached(in *servertest.Instance, token string) bool {
	_, ok := in.Devices().CachedAuth(token)
	return ok
}

func send(t *testing.T, in *servertest.Instance, txn string, n int) {
	t.Helper()
	in.Send(t, "tok-alice", "m.test", txn, map[string]map[string]any{bob: {"B1": map[string]any{"n": n}}})
}

func requireUnknownToken(t *testing.T, r servertest.Response, what string) {
	t.Helper()
	require.Equal(t, http.StatusUnauthorized, r.Status, "%s: %s", what, r.Body)
	require.Equal(t, "M_UNKNOWN_TOKEN", r.Errcode(t), what)
}

func TestSyncRevokedTokenStopsAtOnce(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		first := in.Sync(t, "tok-bob", "", 0)
		require.True(t, cached(in, "tok-bob"), "the first sync remembered the token")
		for i := range 3 {
			send(t, in, string(rune('a'+i)), i)
		}
		got := in.Sync(t, "tok-bob", first.NextBatch, 0)
		require.Equal(t, []int{0, 1, 2}, ns(got.ToDevice.Events))

		// The internal API gives the device another token: the very next
		// sync with the old one, though it was remembered, is refused, and
		// its since acknowledged nothing.
		in.PutDevice(t, bob, "B1", "tok-bob-2")
		require.True(t, cached(in, "tok-bob"))
		requireUnknownToken(t, in.RawSync(context.Background(), t, "tok-bob", got.NextBatch, 0), "the replaced token")
		require.False(t, cached(in, "tok-bob"), "a failed guard forgets the token")
		requireUnknownToken(t, in.RawSync(context.Background(), t, "tok-bob", got.NextBatch, 0), "and again, read from the database")
		again := in.Sync(t, "tok-bob-2", first.NextBatch, 0)
		require.Equal(t, []int{0, 1, 2}, ns(again.ToDevice.Events), "the revoked token's since deleted nothing")
		require.Empty(t, in.Sync(t, "tok-bob-2", again.NextBatch, 0).ToDevice.Events, "the new token acknowledges")

		// A deleted device's remembered token is refused too, even with
		// a request it would refuse for another reason: 401, not 400.
		in.Sync(t, "tok-alice", "", 0)
		require.True(t, cached(in, "tok-alice"))
		r := in.RawSync(context.Background(), t, "tok-alice", "garbage", 0)
		require.Equal(t, http.StatusBadRequest, r.Status, "a good remembered token with a bad since: %s", r.Body)
		require.Equal(t, http.StatusOK, in.DeleteDevice(t, alice, "A1").Status)
		requireUnknownToken(t, in.RawSync(context.Background(), t, "tok-alice", "garbage", 0), "a deleted device's token with a bad since")
		requireUnknownToken(t, in.RawSync(context.Background(), t, "tok-alice", "", 0), "a deleted device's token")
	})
}

// A token the internal API gave to another device after its device was
// deleted serves that device: the sync that found the guard failing is
// redone as the device the token names now, and the since made for the old
// device acknowledges nothing of the new one.
func TestSyncTokenGivenToAnotherDevice(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok")
		in.PutDevice(t, bob, "B2", "tok-b2")
		in.Send(t, "tok-alice", "m.test", "b2", map[string]map[string]any{bob: {"B2": map[string]any{"n": 20}}})
		send(t, in, "b1", 10)
		s := in.Sync(t, "tok", "", 0)
		require.Equal(t, []int{10}, ns(s.ToDevice.Events))
		require.True(t, cached(in, "tok"))

		require.Equal(t, http.StatusOK, in.DeleteDevice(t, bob, "B1").Status)
		in.PutDevice(t, bob, "B2", "tok")
		got := in.Sync(t, "tok", s.NextBatch, 0)
		require.Equal(t, []int{20}, ns(got.ToDevice.Events), "served as B2, from its oldest message")
		requireUnknownToken(t, in.RawSync(context.Background(), t, "tok-b2", "", 0), "B2's old token")
		require.Empty(t, in.Sync(t, "tok", got.NextBatch, 0).ToDevice.Events)
	})
}

// Replicas share the database and nothing else: a token revoked through
// one is refused by another at once, though the other remembered it.
func TestSyncTokenRevokedOnAnotherReplica(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		a, other := twoReplicas(t, b)
		a.PutDevice(t, alice, "A1", "tok-alice")
		a.PutDevice(t, bob, "B1", "tok-bob")
		a.PutDevice(t, bob, "B2", "tok-b2")
		first := other.Sync(t, "tok-bob", "", 0)
		a.Sync(t, "tok-bob", "", 0)
		other.Sync(t, "tok-b2", "", 0)
		require.True(t, cached(other, "tok-bob"))
		require.True(t, cached(a, "tok-bob"))
		send(t, a, "x", 1)
		got := other.Sync(t, "tok-bob", first.NextBatch, 0)
		require.Equal(t, []int{1}, ns(got.ToDevice.Events))

		a.PutDevice(t, bob, "B1", "tok-bob-2")
		requireUnknownToken(t, other.RawSync(context.Background(), t, "tok-bob", got.NextBatch, 0), "revoked on the other replica")
		require.Equal(t, []int{1}, ns(a.Sync(t, "tok-bob-2", first.NextBatch, 0).ToDevice.Events), "nothing was acknowledged")

		require.Equal(t, http.StatusOK, a.DeleteDevice(t, bob, "B2").Status)
		requireUnknownToken(t, other.RawSync(context.Background(), t, "tok-b2", "", 0), "a device deleted on the other replica")
	})
}

// replicas starts an instance and, where the backend allows more than one,
// a second on the same database.
func replicas(t *testing.T, b servertest.Backend) []*servertest.Instance {
	url := b.NewURL(t)
	in := []*servertest.Instance{servertest.Start(t, servertest.Config(url), server.Options{})}
	if b.MultiInstance {
		in = append(in, servertest.Start(t, servertest.Config(url), server.Options{}))
	}
	return in
}

// twoReplicas starts two instances on one database, skipping the test on a
// backend that serves a database from one instance only.
func twoReplicas(t *testing.T, b servertest.Backend) (*servertest.Instance, *servertest.Instance) {
	if !b.MultiInstance {
		t.Skip("one instance per database")
	}
	in := replicas(t, b)
	return in[0], in[1]
}

// A long-poll whose token is revoked while it waits ends with 401 at its
// next check (here, the wake-up of a message for the device), on the
// replica that revoked it or another; the message waits for the new token.
func TestLongPollEndsWhenTokenRevoked(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		waiters := replicas(t, b)
		a := waiters[0]
		a.PutDevice(t, alice, "A1", "tok-alice")
		for i, in := range waiters {
			old, tok := "tok-bob-"+string(rune('0'+i)), "tok-bob-"+string(rune('1'+i))
			a.PutDevice(t, bob, "B1", old)
			s := in.Sync(t, old, "", 0)
			require.Empty(t, s.ToDevice.Events)
			require.True(t, cached(in, old))

			waiting := make(chan servertest.Response, 1)
			go func() { waiting <- in.RawSync(context.Background(), t, old, s.NextBatch, 10*time.Minute) }()
			servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
			a.PutDevice(t, bob, "B1", tok)
			send(t, a, "w"+tok, i)
			select {
			case r := <-waiting:
				requireUnknownToken(t, r, "the long-poll of a revoked token")
			case <-time.After(30 * time.Second):
				t.Fatal("the long-poll did not end at its next check")
			}
			got := in.Sync(t, tok, s.NextBatch, 0)
			require.Equal(t, []int{i}, ns(got.ToDevice.Events), "the message waited for the new token")
			in.Sync(t, tok, got.NextBatch, 0)
		}
	})
}

// The sliding-sync e2ee extension next to to_device reads its counts in
// the to-device round trip; a claim still ends its wait.
func TestSlidingSyncE2EEKeyCountsWithToDevice(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, _ := aliceUploaded(t, b)
		r := rawSS(context.Background(), t, in, "tok-alice", "", 0, ssBody(true, "", 100, true))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `{"signed_curve25519":2}`, string(mustField(t, r.Body, "extensions", "e2ee", "device_one_time_keys_count")))
		require.JSONEq(t, `[]`, string(mustField(t, r.Body, "extensions", "e2ee", "device_unused_fallback_key_types")))
		first := ss(t, in, "tok-alice", "", 0, ssBody(true, "", 100, true))
		requireClaimEndsSlidingWait(t, in, first.Pos, ssBody(true, first.Extensions.ToDevice.NextBatch, 100, true), "the connection")
	})
}

// sendToDevice starts on a remembered token too; the send's own transaction
// checks it (inbox.SenderGuard). A replaced or deleted device's token sends
// nothing, at once, and is told 401 even for a request it would refuse for
// another reason; a remembered token now held by another device sends as
// that device.
func TestSendRevokedTokenStopsAtOnce(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		first := in.Sync(t, "tok-bob", "", 0)
		rawSend := func(token, txn string, body any) servertest.Response {
			t.Helper()
			return in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/"+txn, token, body)
		}
		msg := func(n int) map[string]any {
			return map[string]any{"messages": map[string]map[string]any{bob: {"B1": map[string]any{"n": n}}}}
		}
		send(t, in, "a", 0)
		require.True(t, cached(in, "tok-alice"), "the first send remembered the token")

		// The internal API gives the device another token: the next send
		// with the old one, though remembered, is refused and stores
		// nothing; its txnId is free for the new token.
		in.PutDevice(t, alice, "A1", "tok-alice-2")
		require.True(t, cached(in, "tok-alice"))
		requireUnknownToken(t, rawSend("tok-alice", "b", msg(1)), "the replaced token")
		require.False(t, cached(in, "tok-alice"), "a failed guard forgets the token")
		requireUnknownToken(t, rawSend("tok-alice", "a", msg(0)), "a retry with the replaced token")
		r := rawSend("tok-alice-2", "b", msg(1))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		got := in.Sync(t, "tok-bob", first.NextBatch, 0)
		require.Equal(t, []int{0, 1}, ns(got.ToDevice.Events), "the refused send delivered nothing")

		// A deleted device's remembered token: 401, not 400, for a bad
		// body; nothing sent.
		require.True(t, cached(in, "tok-alice-2"))
		r = rawSend("tok-alice-2", "c", []byte("not json"))
		require.Equal(t, http.StatusBadRequest, r.Status, "a good remembered token with a bad body: %s", r.Body)
		require.Equal(t, http.StatusOK, in.DeleteDevice(t, alice, "A1").Status)
		requireUnknownToken(t, rawSend("tok-alice-2", "c", []byte("not json")), "a deleted device's token with a bad body")
		requireUnknownToken(t, rawSend("tok-alice-2", "d", msg(2)), "a deleted device's token")

		// A remembered token given to another device sends as that device.
		in.PutDevice(t, alice, "A3", "tok-x")
		r = rawSend("tok-x", "e", msg(3))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.Equal(t, http.StatusOK, in.DeleteDevice(t, alice, "A3").Status)
		in.PutDevice(t, alice, "A4", "tok-x")
		require.True(t, cached(in, "tok-x"), "remembered for the deleted device")
		r = rawSend("tok-x", "e", msg(4))
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		rest := in.Sync(t, "tok-bob", got.NextBatch, 0)
		require.Equal(t, []int{3, 4}, ns(rest.ToDevice.Events),
			"the same txnId from the new device is its own transaction; the deleted device's token sent nothing")
	})
}

// A long-poll that skipped its first check (its replica answered its since
// and heard nothing of the device since) still ends with 401 at once when
// the device's token is replaced, with no message for it: the replacement
// wakes the device, on the replica that made it and on the others.
func TestQuietLongPollOfReplacedTokenEndsAtOnce(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		waiters := replicas(t, b)
		a := waiters[0]
		for i, in := range waiters {
			servertest.WaitFor(t, "the replica to hear wake-ups", func() bool { return !in.Hub().Deaf() })
			old, tok := "tok-bob-"+string(rune('0'+i)), "tok-bob-"+string(rune('1'+i))
			a.PutDevice(t, bob, "B1", old)
			s := in.Sync(t, old, "", 0)
			_, skipped := in.SyncChecks()

			waiting := make(chan servertest.Response, 1)
			go func() { waiting <- in.RawSync(context.Background(), t, old, s.NextBatch, 10*time.Minute) }()
			servertest.WaitFor(t, "the long-poll to skip its first check", func() bool { _, k := in.SyncChecks(); return k == skipped+1 })
			a.PutDevice(t, bob, "B1", tok)
			select {
			case r := <-waiting:
				requireUnknownToken(t, r, "the quiet long-poll of a replaced token")
			case <-time.After(30 * time.Second):
				t.Fatal("the long-poll did not end when its token was replaced")
			}
		}
	})
}
