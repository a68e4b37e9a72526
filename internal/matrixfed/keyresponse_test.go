package matrixfed

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The key response is signed once and served from the cache until half of
// its validity has passed, then signed again with a later valid_until_ts.
func TestKeyResponseCacheSignsAgainAtHalfValidity(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	c := NewKeyResponseCache("hs.example", testKey(t, "ed25519:a", 1))
	c.now = func() time.Time { return now }
	validUntil := func(body []byte) int64 {
		var r struct {
			ValidUntil int64 `json:"valid_until_ts"`
		}
		require.NoError(t, json.Unmarshal(body, &r))
		return r.ValidUntil
	}

	first, err := c.Response()
	require.NoError(t, err)
	require.Equal(t, now.Add(KeyResponseValidity).UnixMilli(), validUntil(first))

	now = now.Add(KeyResponseValidity/2 - time.Second)
	cached, err := c.Response()
	require.NoError(t, err)
	require.Equal(t, first, cached, "served from the cache before half its validity")

	now = now.Add(time.Second)
	again, err := c.Response()
	require.NoError(t, err)
	require.Equal(t, now.Add(KeyResponseValidity).UnixMilli(), validUntil(again), "signed again at half its validity")
}
