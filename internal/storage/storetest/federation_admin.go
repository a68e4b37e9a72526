package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/federation"
)

// testAdminDestinations: the admin's list of destinations (backlog, oldest,
// backoff, lease, stored transaction), "retry now" and "drop queue", which
// fences a sender in flight and leaves other destinations alone.
func testAdminDestinations(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Federation()
	q := queueRemote(t, b, remote, 1, 2, 3)
	queueRemote(t, b, other, 4)
	l := acquire(t, s, remote, "h1", leaseFor)
	require.NoError(t, s.SaveTxn(ctx(t), l, storedTxn("t1", q[:2])))
	_, err := s.RecordFailure(ctx(t), l, federation.FailedAttempt{TxnID: "t1", Status: 502, Wait: time.Hour})
	require.NoError(t, err)

	ds, err := s.Destinations(ctx(t), 10)
	require.NoError(t, err)
	require.Len(t, ds, 2)
	d := ds[0]
	require.Equal(t, remote, d.Destination, "the largest queue first")
	require.EqualValues(t, 3, d.Queued)
	require.NotNil(t, d.Oldest)
	require.Equal(t, 1, d.Failures)
	require.NotNil(t, d.RetryAt)
	require.Greater(t, time.Until(*d.RetryAt), 30*time.Minute)
	require.Equal(t, "h1", d.LeaseHolder)
	require.NotNil(t, d.LeaseUntil)
	require.Equal(t, "t1", d.TxnID)
	require.Equal(t, 1, d.TxnAttempts)
	require.Equal(t, 502, d.LastStatus)
	require.Equal(t, federation.DestinationState{Destination: other, Queued: 1, Oldest: ds[1].Oldest}, ds[1])
	ds, err = s.Destinations(ctx(t), 1)
	require.NoError(t, err)
	require.Len(t, ds, 1)

	// Retry now: the backoff ends.
	found, err := s.RetryNow(ctx(t), remote)
	require.NoError(t, err)
	require.True(t, found)
	found, err = s.RetryNow(ctx(t), "never.test")
	require.NoError(t, err)
	require.False(t, found)
	n, err := s.BackingOff(ctx(t))
	require.NoError(t, err)
	require.Zero(t, n)

	// Drop the queue: the sender in flight is fenced out, the other
	// destination keeps its EDU.
	dropped, err := s.DropQueue(ctx(t), remote)
	require.NoError(t, err)
	require.Equal(t, 3, dropped)
	_, err = s.CompleteTxn(ctx(t), l, "t1")
	require.ErrorIs(t, err, federation.ErrLeaseLost)
	st, err := s.StoredTxn(ctx(t), remote)
	require.NoError(t, err)
	require.Nil(t, st)
	rest, err := b.Inbox().PeekOutbox(ctx(t), other, 10)
	require.NoError(t, err)
	require.Len(t, rest, 1)
	ds, err = s.Destinations(ctx(t), 10)
	require.NoError(t, err)
	require.Equal(t, other, ds[0].Destination)
	require.Equal(t, remote, ds[1].Destination)
	require.Zero(t, ds[1].Queued)
	require.Empty(t, ds[1].LeaseHolder)
	acquire(t, s, remote, "h2", leaseFor)
}
