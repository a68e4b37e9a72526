package devicesync_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

func requireInvalid(t *testing.T, err error, token string) {
	t.Helper()
	e, ok := matrix.AsError(err)
	require.True(t, ok, "token %q must be refused, got %v", token, err)
	require.Equal(t, matrix.InvalidParam, e.Code, "token %q", token)
}

func TestToDeviceTokenRoundTrip(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 42}
	p := inbox.Position{NID: 42, Lo: 7, Hi: 19}
	s := devicesync.FormatToDevice("abc123", p)
	require.Equal(t, "abc123_42_7_19", s)
	got, err := devicesync.ParseToDevice("abc123", dev, s)
	require.NoError(t, err)
	require.Equal(t, p, got)
	require.Equal(t, inbox.Position{NID: 42, Lo: 19, Hi: 19}, p.Acked())
}

func TestToDeviceTokenOfAnotherEpochOrDeviceIsInitial(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 42}
	got, err := devicesync.ParseToDevice("newepoch", dev, "oldepoch_42_7_19")
	require.NoError(t, err)
	require.Equal(t, inbox.Position{NID: 42}, got, "another epoch acknowledges nothing")
	got, err = devicesync.ParseToDevice("abc", dev, "abc_41_7_19")
	require.NoError(t, err)
	require.Equal(t, inbox.Position{NID: 42}, got, "another incarnation of the device acknowledges nothing")
}

// malformedToDevice are to-device tokens this server cannot have made.
var malformedToDevice = []string{
	"", "x", "abc_1_2", "abc_1_2_3_4", "abc_1_3_2", "ABC_1_2_3", "abc_-1_2_3", "abc_1_+2_3",
	"abc_1_2_ 3", "abc_1_2_99999999999999999999", "_1_2_3", "abc_1_2_3x",
	"abcdefghijklmnopqrstuvwxyz0123456789_1_2_3",
}

func TestMalformedToDeviceTokens(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 1}
	for _, s := range malformedToDevice {
		_, err := devicesync.ParseToDevice("abc", dev, s)
		requireInvalid(t, err, s)
	}
}

func TestClientTokenRoundTrip(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 42}
	p := inbox.Position{NID: 42, Lo: 7, Hi: 19}
	s := devicesync.FormatToken("abc123", p, 5)
	require.Equal(t, "abc123_42_7_19_5", s)
	got, err := devicesync.ParseToken("abc123", dev, s)
	require.NoError(t, err)
	require.Equal(t, devicesync.Token{ToDevice: p, Lists: devicesync.ListsAt(5)}, got)
	require.Equal(t, devicesync.ListsSince{Incremental: true, Pos: 5}, got.Lists)
}

// A client token of another epoch acknowledges nothing, and its device-list
// half cannot be placed: everyone the user shares a room with changed. A
// token of another incarnation of the device acknowledges nothing, but its
// device-list position is the user's and stays good.
func TestClientTokenEpochRules(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 42}
	got, err := devicesync.ParseToken("newepoch", dev, "oldepoch_42_7_19_5")
	require.NoError(t, err)
	require.Equal(t, devicesync.Token{
		ToDevice: inbox.Position{NID: 42},
		Lists:    devicesync.ListsSince{Incremental: true, Everyone: true},
	}, got)

	got, err = devicesync.ParseToken("abc", dev, "abc_41_7_19_5")
	require.NoError(t, err)
	require.Equal(t, devicesync.Token{ToDevice: inbox.Position{NID: 42}, Lists: devicesync.ListsAt(5)}, got)
}

func TestMalformedClientTokens(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 1}
	bad := []string{"garbage", "abc_1_2_3", "abc_1_2_3_", "abc_1_2_3_-1", "abc_1_2_3_+1", "abc_1_2_3_x",
		"abc_1_2_3_99999999999999999999", "abc_1_3_2_0", "ABC_1_2_3_0", "abc_1_2_3_4_5"}
	for _, s := range malformedToDevice {
		bad = append(bad, s+"_0")
	}
	for _, s := range bad {
		_, err := devicesync.ParseToken("abc", dev, s)
		requireInvalid(t, err, s)
	}
	// The message quotes the token the client sent, whole or a prefix.
	_, err := devicesync.ParseToken("abc", dev, "GARBAGE_1")
	require.ErrorContains(t, err, "GARBAGE_1")
}

func TestListsTokenRoundTrip(t *testing.T) {
	s := devicesync.FormatLists("abc123", 77)
	require.Equal(t, "abc123_77", s)
	got, err := devicesync.ParseLists("abc123", s)
	require.NoError(t, err)
	require.Equal(t, devicesync.ListsAt(77), got)

	got, err = devicesync.ParseLists("abc123", "other_77")
	require.NoError(t, err)
	require.Equal(t, devicesync.ListsSince{Incremental: true, Everyone: true}, got, "another epoch: everyone")

	for _, s := range []string{"", "abc123", "abc123_", "_5", "abc123_-1", "abc123_+1", "abc123_1_2", "abc123_ 1",
		"abc123_99999999999999999999", "ABC_1", strings.Repeat("a", 33) + "_1"} {
		_, err := devicesync.ParseLists("abc123", s)
		requireInvalid(t, err, s)
	}
}

// The zero ListsSince asks for no device-list answer.
func TestZeroListsSinceIsInitial(t *testing.T) {
	require.False(t, devicesync.ListsSince{}.Incremental)
}

func FuzzParseToken(f *testing.F) {
	f.Add("abc_1_2_3_4")
	f.Add("abc_1_0_0_0")
	f.Add("x_9223372036854775807_9223372036854775807_9223372036854775807_9223372036854775807")
	dev := inbox.Recipient{UserID: "@u:x", NID: 1}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := devicesync.ParseToken("abc", dev, s)
		if err != nil {
			requireInvalid(t, err, s)
			return
		}
		// Whatever parses formats to a token that parses the same.
		if !tok.Lists.Everyone {
			again, err := devicesync.ParseToken("abc", dev, devicesync.FormatToken("abc", tok.ToDevice, tok.Lists.Pos))
			require.NoError(t, err)
			require.Equal(t, tok, again)
		}
	})
}
