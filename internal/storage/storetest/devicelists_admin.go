package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testAdminRemoteCache: the admin's view of a remote user's cached list
// (devices and resync state) and "force resync", which makes a fresh cache
// due at once, its backoff forgotten.
func testAdminRemoteCache(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	s := b.Devices()

	st, err := s.RemoteCache(ctx(t), ritaR)
	require.NoError(t, err)
	require.False(t, st.Tracked, "nobody shares a room with her yet")
	found, err := s.ForceResync(ctx(t), ritaR)
	require.NoError(t, err)
	require.False(t, found)

	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, ritaR, "join")
	st, err = s.RemoteCache(ctx(t), ritaR)
	require.NoError(t, err)
	require.True(t, st.Tracked)
	require.True(t, st.Stale, "tracked, not fetched yet")
	require.NotNil(t, st.RetryAt)
	require.Empty(t, st.Devices)

	require.Len(t, claim(t, b), 1)
	res, err := s.CompleteResync(ctx(t), rdl(7, "R1", "R2"))
	require.NoError(t, err)
	require.False(t, res.StillStale)
	require.NoError(t, s.FailResync(ctx(t), ritaR, 3, time.Hour)) // a fresh cache keeps its state
	st, err = s.RemoteCache(ctx(t), ritaR)
	require.NoError(t, err)
	require.False(t, st.Stale)
	require.EqualValues(t, 7, st.StreamID)
	require.Len(t, st.Devices, 2)
	require.Equal(t, "R1", st.Devices[0].DeviceID)
	require.False(t, st.UpdatedAt.IsZero())
	require.Empty(t, claim(t, b), "a fresh cache is not resynced")

	found, err = s.ForceResync(ctx(t), ritaR)
	require.NoError(t, err)
	require.True(t, found)
	st, err = s.RemoteCache(ctx(t), ritaR)
	require.NoError(t, err)
	require.True(t, st.Stale)
	require.Zero(t, st.Failures)
	require.Len(t, st.Devices, 2, "the cache stays until the resync replaces it")
	require.Equal(t, []string{ritaR}, claim(t, b), "due at once")
}
