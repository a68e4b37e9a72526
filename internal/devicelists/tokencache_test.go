package devicelists

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// The token cache holds at most its bound, dropping the least recently
// used token, and forgets a token on demand.
func TestTokenCacheBounded(t *testing.T) {
	c := newTokenCache(3)
	hash := func(i int) []byte { return HashToken(fmt.Sprint("tok", i)) }
	for i := range 3 {
		c.put(hash(i), Device{NID: int64(i)})
	}
	_, ok := c.get(hash(0)) // now the most recently used
	require.True(t, ok)
	c.put(hash(3), Device{NID: 3})
	require.Equal(t, 3, c.len())
	_, ok = c.get(hash(1))
	require.False(t, ok, "the least recently used token was dropped")
	for _, i := range []int{0, 2, 3} {
		d, ok := c.get(hash(i))
		require.True(t, ok, "token %d", i)
		require.Equal(t, int64(i), d.NID)
	}

	c.put(hash(2), Device{NID: 22})
	d, _ := c.get(hash(2))
	require.Equal(t, int64(22), d.NID, "a token authenticated again names its device now")
	require.Equal(t, 3, c.len())

	c.forget(hash(2))
	_, ok = c.get(hash(2))
	require.False(t, ok)
	require.Equal(t, 2, c.len())
	c.forget([]byte("not a hash"))
	_, ok = c.get([]byte("not a hash"))
	require.False(t, ok)
}
