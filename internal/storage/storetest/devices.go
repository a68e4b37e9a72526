package storetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
)

func testDeviceRegistry(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Devices()
	name := "Phone"
	d, created, err := s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B2", TokenHash: devicelists.HashToken("t1"), DisplayName: &name})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "Phone", d.DisplayName)

	again, created, err := s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B2"})
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, d.NID, again.NID, "updating keeps the incarnation")
	require.Equal(t, "Phone", again.DisplayName, "an absent display name is kept")

	got, err := s.DeviceByToken(ctx(t), devicelists.HashToken("t1"))
	require.NoError(t, err, "an absent token keeps the old one")
	require.Equal(t, d.NID, got.NID)

	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B2", TokenHash: devicelists.HashToken("t2")})
	require.NoError(t, err)
	_, err = s.DeviceByToken(ctx(t), devicelists.HashToken("t1"))
	require.ErrorIs(t, err, devicelists.ErrNotFound, "a new token revokes the old one")
	got, err = s.DeviceByToken(ctx(t), devicelists.HashToken("t2"))
	require.NoError(t, err)
	require.Equal(t, bob, got.UserID)
	require.Equal(t, "B2", got.DeviceID)

	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1"})
	require.NoError(t, err)
	list, err := s.UserDevices(ctx(t), bob)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "B1", list[0].DeviceID)
	require.Equal(t, "B2", list[1].DeviceID)

	one, err := s.Device(ctx(t), bob, "B1")
	require.NoError(t, err)
	require.Equal(t, "B1", one.DeviceID)
	_, err = s.Device(ctx(t), bob, "NOPE")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	_, err = s.DeleteDevice(ctx(t), bob, "NOPE")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
}

func testTokenHeldByAnotherDevice(t *testing.T, e *Env) {
	b := e.Open(Options{})
	s := b.Devices()
	_, _, err := s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1", TokenHash: devicelists.HashToken("shared")})
	require.NoError(t, err)
	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: alice, DeviceID: "A1", TokenHash: devicelists.HashToken("shared")})
	require.ErrorIs(t, err, devicelists.ErrTokenInUse, "a token held by another device is refused")
	_, err = s.Device(ctx(t), alice, "A1")
	require.ErrorIs(t, err, devicelists.ErrNotFound, "the refused put created nothing")
	got, err := s.DeviceByToken(ctx(t), devicelists.HashToken("shared"))
	require.NoError(t, err)
	require.Equal(t, bob, got.UserID, "the first device keeps its token")

	// The same device may be given its token again, and a token becomes free
	// when its device gets another one or is deleted.
	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1", TokenHash: devicelists.HashToken("shared")})
	require.NoError(t, err)
	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: bob, DeviceID: "B1", TokenHash: devicelists.HashToken("other")})
	require.NoError(t, err)
	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: alice, DeviceID: "A1", TokenHash: devicelists.HashToken("shared")})
	require.NoError(t, err)
	_, err = s.DeleteDevice(ctx(t), alice, "A1")
	require.NoError(t, err)
	_, _, err = s.PutDevice(ctx(t), devicelists.PutDevice{UserID: carol, DeviceID: "C1", TokenHash: devicelists.HashToken("shared")})
	require.NoError(t, err)
}
