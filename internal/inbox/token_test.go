package inbox

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/mxerr"
)

func TestTokenRoundTrip(t *testing.T) {
	dev := Recipient{UserID: "@u:x", NID: 42}
	p := Position{NID: 42, Lo: 7, Hi: 19}
	s := FormatToken("abc123", p)
	require.Equal(t, "abc123_42_7_19", s)
	got, err := ParseToken("abc123", dev, s)
	require.NoError(t, err)
	require.Equal(t, p, got)
	require.Equal(t, Position{NID: 42, Lo: 19, Hi: 19}, p.Acked())
}

func TestTokenOfAnotherEpochOrDeviceIsInitial(t *testing.T) {
	dev := Recipient{UserID: "@u:x", NID: 42}
	got, err := ParseToken("newepoch", dev, "oldepoch_42_7_19")
	require.NoError(t, err)
	require.Equal(t, Position{NID: 42}, got, "another epoch acknowledges nothing")
	got, err = ParseToken("abc", dev, "abc_41_7_19")
	require.NoError(t, err)
	require.Equal(t, Position{NID: 42}, got, "another incarnation of the device acknowledges nothing")
}

func TestMalformedTokens(t *testing.T) {
	dev := Recipient{UserID: "@u:x", NID: 1}
	for _, s := range []string{
		"", "x", "abc_1_2", "abc_1_2_3_4", "abc_1_3_2", "ABC_1_2_3", "abc_-1_2_3", "abc_1_+2_3",
		"abc_1_2_ 3", "abc_1_2_99999999999999999999", "_1_2_3", "abc_1_2_3x",
		"abcdefghijklmnopqrstuvwxyz0123456789_1_2_3",
	} {
		_, err := ParseToken("abc", dev, s)
		e, ok := mxerr.As(err)
		require.True(t, ok, "token %q must be refused", s)
		require.Equal(t, mxerr.InvalidParam, e.Code)
	}
}
