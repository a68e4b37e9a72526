package storetest

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
)

// A send made with a guard (inbox.SenderGuard) is recorded only if the token
// still names the live sending device: otherwise nothing is written for it —
// no inbox row, no outbox EDU, no transaction record (a later send of the
// same txnId with a good token is not a retry) — and Accept says
// ErrTokenRevoked, also for a retry of a recorded transaction. Concurrent
// sends with good and revoked tokens (written together in groups where the
// backend groups them) end each as it would alone.
func testSendTokenGuard(t *testing.T, e *Env) {
	b := e.Open(Options{})
	tokA, tokB, wrong := devicelists.HashToken("tok-a"), devicelists.HashToken("tok-b"), devicelists.HashToken("wrong")
	sender, _, err := b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: alice, DeviceID: "A1", TokenHash: tokA})
	require.NoError(t, err)
	dev := mkDevice(t, b, bob, "B1")
	const remote = "guard.remote.test"

	send := func(id string, hash []byte, n int, viaRemote bool) (inbox.AcceptResult, error) {
		t.Helper()
		msgs := to(bob, "B1", content(n))
		if viaRemote {
			msgs["@dave:"+remote] = to("@dave:"+remote, "D1", content(n))["@dave:"+remote]
		}
		a, err := inbox.BuildAccept(server, txn(alice, "A1", "m.test", id), msgs)
		require.NoError(t, err)
		a.Response = []byte(fmt.Sprintf(`{"id":%q}`, id))
		a.Guard = &inbox.SenderGuard{NID: sender.NID, TokenHash: hash}
		return b.Inbox().Accept(ctx(t), a)
	}
	pending := func() []int {
		t.Helper()
		res, err := b.Inbox().Sync(ctx(t), inbox.SyncQuery{Device: dev, Limit: 100})
		require.NoError(t, err)
		got := msgNs(t, res.Messages)
		sort.Ints(got)
		return got
	}
	outbox := func() int {
		t.Helper()
		q, err := b.Inbox().PeekOutbox(ctx(t), remote, 100)
		require.NoError(t, err)
		return len(q)
	}

	res, err := send("1", tokA, 1, false)
	require.NoError(t, err, "the device's own token")
	require.Equal(t, 1, res.Delivered)
	require.Equal(t, `{"id":"1"}`, string(res.Response))

	for _, viaRemote := range []bool{false, true} {
		_, err = send("2", wrong, 2, viaRemote)
		require.ErrorIs(t, err, inbox.ErrTokenRevoked, "another token (remote recipient too: %v)", viaRemote)
	}
	_, err = send("1", wrong, 1, false)
	require.ErrorIs(t, err, inbox.ErrTokenRevoked, "a retry with another token is refused, not answered")
	require.Equal(t, []int{1}, pending(), "a refused send wrote no inbox row")
	require.Zero(t, outbox(), "a refused send queued no EDU")

	res, err = send("2", tokA, 2, true)
	require.NoError(t, err)
	require.False(t, res.Duplicate, "a refused send recorded no transaction")
	require.Equal(t, 1, outbox())

	// The internal API gives the device another token: the old one stops
	// at once.
	_, _, err = b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: alice, DeviceID: "A1", TokenHash: tokB})
	require.NoError(t, err)
	_, err = send("3", tokA, 3, false)
	require.ErrorIs(t, err, inbox.ErrTokenRevoked, "the replaced token")
	_, err = send("3", tokB, 3, false)
	require.NoError(t, err, "the new token")

	// Concurrent sends, half with the replaced token, half with the new
	// one, some of them retried at once, some with a remote recipient.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var good []int
	for i := range 40 {
		hash := tokB
		if i%2 == 1 {
			hash = tokA
		}
		n := 100 + i
		for range 1 + i%3/2 {
			wg.Go(func() {
				res, err := send(fmt.Sprint("c", n), hash, n, i%5 == 0)
				if i%2 == 1 {
					if !errors.Is(err, inbox.ErrTokenRevoked) {
						t.Errorf("send %d with the replaced token: %v", n, err)
					}
					return
				}
				if err != nil || string(res.Response) != fmt.Sprintf(`{"id":"c%d"}`, n) {
					t.Errorf("send %d with the new token: %+v, %v", n, res, err)
					return
				}
				if !res.Duplicate {
					mu.Lock()
					good = append(good, n)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	want := []int{1, 2, 3}
	for i := 0; i < 40; i += 2 {
		want = append(want, 100+i)
	}
	sort.Ints(good)
	require.Len(t, good, 20, "each good send recorded once")
	require.Equal(t, want, pending(), "every good send delivered once, no refused one")
	require.Equal(t, 1+4, outbox(), "EDUs of good sends only")

	// A deleted device's token is revoked with it.
	_, err = b.Devices().DeleteDevice(ctx(t), alice, "A1")
	require.NoError(t, err)
	_, err = send("4", tokB, 4, false)
	require.ErrorIs(t, err, inbox.ErrTokenRevoked, "the deleted device's token")
	require.Equal(t, want, pending())
}
