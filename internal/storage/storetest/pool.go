package storetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/storage"
)

// testPoolStats checks that the backend reports its connection pool for the
// todeviced_db_pool_* metrics (storage.PoolStatser), with numbers that add up.
func testPoolStats(t *testing.T, e *Env) {
	b := e.Open(Options{})
	ps, ok := b.(storage.PoolStatser)
	require.True(t, ok, "backend %T must implement storage.PoolStatser (database/sql backends: storage.PoolStatsFromDB)", b)
	before := ps.PoolStats()
	for range 3 {
		require.NoError(t, b.Ping(ctx(t)))
	}
	after := ps.PoolStats()
	if after.MaxConns > 0 { // 0: unlimited
		require.LessOrEqual(t, after.Acquired+after.Idle+after.Constructing, after.MaxConns)
	}
	require.Positive(t, after.Acquired+after.Idle, "the pings left a connection open")
	require.GreaterOrEqual(t, after.EmptyAcquires, before.EmptyAcquires, "counters never go down")
	require.GreaterOrEqual(t, after.AcquireWait, before.AcquireWait, "counters never go down")
	if after.AcquiresKnown {
		require.GreaterOrEqual(t, after.Acquires, before.Acquires+3, "every ping acquired a connection")
	}
}
