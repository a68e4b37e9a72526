package storetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
)

// testAdminInbox: the admin's counts of one device's inbox, a user's
// devices, the largest inboxes, and purges by device and (type | sender)
// that never touch another device's rows.
func testAdminInbox(t *testing.T, e *Env) {
	b := e.Open(Options{})
	st := b.Inbox()
	svc := Service(b, server)
	a1 := mkDevice(t, b, alice, "A1")
	a2 := mkDevice(t, b, alice, "A2")
	b1 := mkDevice(t, b, bob, "B1")

	// alice's A1: 3 spam from carol, 2 room keys from bob; A2: 1 spam;
	// bob's B1: 2 spam.
	for i := range 3 {
		accept(t, b, txn(carol, "C", "m.spam", "s"+string(rune('0'+i))), inbox.Messages{alice: {"A1": content(i)}})
	}
	for i := range 2 {
		accept(t, b, txn(bob, "B1", "m.room_key", "k"+string(rune('0'+i))), to(alice, "A1", content(10+i)))
	}
	accept(t, b, txn(carol, "C", "m.spam", "a2"), to(alice, "A2", content(20)))
	accept(t, b, txn(carol, "C", "m.spam", "b1"), to(bob, "B1", content(30)))
	accept(t, b, txn(carol, "C", "m.spam", "b2"), to(bob, "B1", content(31)))

	stats, err := st.InboxStats(ctx(t), a1)
	require.NoError(t, err)
	require.EqualValues(t, 5, stats.Count)
	require.NotNil(t, stats.Oldest)
	require.Equal(t, []inbox.KeyCount{{Key: "m.spam", Count: 3}, {Key: "m.room_key", Count: 2}}, stats.ByType)
	require.Equal(t, []inbox.KeyCount{{Key: carol, Count: 3}, {Key: bob, Count: 2}}, stats.BySender)

	empty := mkDevice(t, b, carol, "EMPTY")
	stats, err = st.InboxStats(ctx(t), empty)
	require.NoError(t, err)
	require.Zero(t, stats.Count)
	require.Nil(t, stats.Oldest)
	require.Empty(t, stats.ByType)

	devs, err := st.UserInboxes(ctx(t), alice)
	require.NoError(t, err)
	require.Len(t, devs, 2)
	require.Equal(t, "A1", devs[0].DeviceID)
	require.EqualValues(t, 5, devs[0].Count)
	require.Equal(t, a1.NID, devs[0].NID)
	require.Equal(t, "A2", devs[1].DeviceID)
	require.EqualValues(t, 1, devs[1].Count)
	require.NotNil(t, devs[1].Oldest)

	top, err := st.LargestInboxes(ctx(t), 2)
	require.NoError(t, err)
	require.Len(t, top, 2)
	require.Equal(t, inbox.InboxSize{UserID: alice, DeviceID: "A1", NID: a1.NID, Count: 5, Oldest: top[0].Oldest}, top[0])
	require.Equal(t, "B1", top[1].DeviceID)
	require.EqualValues(t, 2, top[1].Count)

	// By type, in batches smaller than what matches.
	n, err := st.PurgeInbox(ctx(t), a1, inbox.PurgeFilter{Type: "m.spam"}, 2)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = svc.AdminPurge(ctx(t), a1, inbox.PurgeFilter{Type: "m.spam"})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	// Other devices' spam is untouched.
	for _, d := range []inbox.Recipient{a2, b1} {
		s, err := st.InboxStats(ctx(t), d)
		require.NoError(t, err)
		require.NotZero(t, s.Count)
	}
	// What is left is delivered in order, and acknowledged as before.
	evs, _ := drain(t, svc, a1, inbox.Position{NID: a1.NID})
	require.Equal(t, []int{10, 11}, eventNs(t, evs))

	// By sender.
	n, err = svc.AdminPurge(ctx(t), b1, inbox.PurgeFilter{Sender: bob})
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = svc.AdminPurge(ctx(t), b1, inbox.PurgeFilter{Sender: carol})
	require.NoError(t, err)
	require.Equal(t, 2, n)

	// Everything, and never by both keys.
	_, err = svc.AdminPurge(ctx(t), a2, inbox.PurgeFilter{Type: "m.spam", Sender: carol})
	require.ErrorIs(t, err, inbox.ErrBadFilter)
	n, err = svc.AdminPurge(ctx(t), a2, inbox.PurgeFilter{})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	top, err = st.LargestInboxes(ctx(t), 10)
	require.NoError(t, err)
	require.Empty(t, top)
}
