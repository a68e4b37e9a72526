package devicesync_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

func TestPosRoundTripAndRefusals(t *testing.T) {
	dev := inbox.Recipient{UserID: "@u:x", NID: 42}
	now := time.Unix(1_800_000_000, 0)
	p := devicesync.Pos{Lists: 1234, Issued: now.Unix()}
	s := devicesync.FormatPos("abc123", dev, "main", p)
	require.True(t, strings.HasPrefix(s, "abc123_1234_1800000000_"), s)
	got, err := devicesync.ParsePos("abc123", dev, "main", s, now.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, p, got)

	unknown := func(name, epoch string, d inbox.Recipient, conn, pos string, at time.Time) {
		t.Helper()
		_, err := devicesync.ParsePos(epoch, d, conn, pos, at)
		e, ok := matrix.AsError(err)
		require.True(t, ok, "%s: %v", name, err)
		require.Equal(t, devicesync.CodeUnknownPos, e.Code, name)
		require.Equal(t, 400, e.Status, name)
	}
	unknown("another epoch", "other", dev, "main", s, now)
	unknown("another connection", "abc123", dev, "", s, now)
	unknown("another incarnation", "abc123", inbox.Recipient{UserID: "@u:x", NID: 43}, "main", s, now)
	unknown("another user", "abc123", inbox.Recipient{UserID: "@v:x", NID: 42}, "main", s, now)
	unknown("expired", "abc123", dev, "main", s, now.Add(devicesync.PosMaxAge+time.Second))
	unknown("issued in the future", "abc123", dev, "main", s, now.Add(-time.Hour))
	unknown("altered position", "abc123", dev, "main", strings.Replace(s, "_1234_", "_1235_", 1), now)
	for _, bad := range []string{"", "abc123", "abc123_1_2", "abc123_-1_2_x", "abc123_1_2_3_4", "abc123_1_+2_" + strings.Repeat("0", 16)} {
		unknown("malformed "+bad, "abc123", dev, "main", bad, now)
	}
}
