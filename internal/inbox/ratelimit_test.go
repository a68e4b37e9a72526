package inbox

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewRateLimiter[int64](2, 3, func() time.Time { return now })
	for range 3 {
		ok, _ := l.Allow(1)
		require.True(t, ok, "the burst is available at once")
	}
	ok, wait := l.Allow(1)
	require.False(t, ok)
	require.Equal(t, 500*time.Millisecond, wait, "at 2/s the next token comes in half a second")
	ok, _ = l.Allow(2)
	require.True(t, ok, "devices have buckets of their own")

	now = now.Add(wait)
	ok, _ = l.Allow(1)
	require.True(t, ok)
	ok, _ = l.Allow(1)
	require.False(t, ok)

	now = now.Add(time.Hour)
	for range 3 {
		ok, _ := l.Allow(1)
		require.True(t, ok, "a bucket refills up to the burst, not beyond")
	}
	ok, _ = l.Allow(1)
	require.False(t, ok)

	now = now.Add(2 * time.Minute)
	l.Allow(3)
	require.Len(t, l.buckets, 1, "refilled buckets are forgotten")
}
