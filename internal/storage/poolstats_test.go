package storage_test

import (
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/storage"
)

// A database/sql backend (SQLite) maps its DBStats onto PoolStats; the
// counters it does not keep stay marked unknown so they are not exported as 0.
func TestPoolStatsFromDB(t *testing.T) {
	got := storage.PoolStatsFromDB(sql.DBStats{MaxOpenConnections: 8, OpenConnections: 3, InUse: 2, Idle: 1, WaitCount: 5, WaitDuration: 2 * time.Second})
	require.Equal(t, storage.PoolStats{MaxConns: 8, Acquired: 2, Idle: 1, EmptyAcquires: 5, AcquireWait: 2 * time.Second}, got)
	require.False(t, got.AcquiresKnown)
	require.False(t, got.CanceledAcquiresKnown)
}
