package storetest

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
)

// testInboxBound: an inbox over --inbox-max-messages is trimmed to it,
// requests and verification steps first, then the oldest messages, while the
// device keeps syncing: what it was handed stays handed out, nothing else
// is skipped or repeated, and other devices are untouched.
func testInboxBound(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dev := mkDevice(t, b, bob, "B1")
	other := mkDevice(t, b, bob, "B2")
	request := func(n int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"action":"request","request_id":"r%d","requesting_device_id":"A1","n":%d}`, n, n))
	}
	// Pending for B1, in order: n=0 m.test, 1 key request, 2 m.test,
	// 3 verification request, 4 key request, 5..8 m.test, 9 key request.
	kinds := map[int]string{1: "m.room_key_request", 3: "m.key.verification.request", 4: "m.room_key_request", 9: "m.room_key_request"}
	for n := range 10 {
		kind, c := "m.test", content(n)
		if k, ok := kinds[n]; ok {
			kind, c = k, request(n)
		}
		accept(t, b, txn(alice, "A1", kind, fmt.Sprint("b", n)), inbox.Messages{bob: {"B1": c, "B2": content(100 + n)}})
	}
	m := inbox.NewMetrics(nil)
	svc := inbox.New(inbox.Config{ServerName: server, Store: b.Inbox(), Metrics: m, MaxMessages: 12})
	// B1 takes its first two messages (n=0, 1) and has not acknowledged.
	handed, err := svc.Sync(ctx(t), dev, inbox.Position{NID: dev.NID}, 2)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, eventNs(t, handed.Events))

	// Within the cap: nothing happens.
	n, err := svc.TrimInboxes(ctx(t))
	require.NoError(t, err)
	require.Zero(t, n)

	// Cap 6: B1 (10 pending) and B2 (10) lose 4 each, their requests first:
	// the key requests (n=1, 4, 9; B1's n=1 although it was handed out),
	// then the verification request (n=3). B2 got the same types.
	svc = inbox.New(inbox.Config{ServerName: server, Store: b.Inbox(), Metrics: m, MaxMessages: 6})
	n, err = svc.TrimInboxes(ctx(t))
	require.NoError(t, err)
	require.Equal(t, 8, n)
	rest, _ := drain(t, svc, dev, handed.Next)
	require.Equal(t, []int{2, 5, 6, 7, 8}, eventNs(t, rest), "after the handed-out ones, the rest in order, requests gone")
	otherRest, _ := drain(t, svc, other, inbox.Position{NID: other.NID})
	require.Equal(t, []int{100, 102, 105, 106, 107, 108}, eventNs(t, otherRest), "another device's inbox, trimmed on its own")

	// Cap 3 with no requests left: the oldest messages go (B1 has 5 + 4
	// pending).
	for n := 10; n < 14; n++ {
		accept(t, b, txn(alice, "A1", "m.test", fmt.Sprint("c", n)), to(bob, "B1", content(n)))
	}
	svc = inbox.New(inbox.Config{ServerName: server, Store: b.Inbox(), Metrics: m, MaxMessages: 3})
	_, err = svc.TrimInboxes(ctx(t))
	require.NoError(t, err)
	fresh, _ := drain(t, svc, dev, inbox.Position{NID: dev.NID})
	require.Equal(t, []int{11, 12, 13}, eventNs(t, fresh))
}
