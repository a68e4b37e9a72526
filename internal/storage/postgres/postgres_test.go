package postgres_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/storage/storetest"
	"github.com/todeviced/todeviced/internal/testdb"
)

func TestMain(m *testing.M) {
	code := testdb.Main(m)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

func pgOf(t *testing.T, b storage.Backend) *postgres.DB {
	t.Helper()
	type unwrapper interface{ Postgres() *postgres.DB }
	u, ok := b.(unwrapper)
	require.True(t, ok, "backend %T is not PostgreSQL", b)
	return u.Postgres()
}

// Harness runs the conformance suite against PostgreSQL.
var Harness = storetest.Harness{
	// Each case gets a clone of the migrated template database (fast);
	// the epoch cases recreate theirs empty through Recreate.
	NewURL:        func(t *testing.T) string { return testdb.New(t) },
	Recreate:      func(t *testing.T, url string) { testdb.Recreate(t, url) },
	MultiInstance: true,
	WaitingWriters: func(t *testing.T, b storage.Backend) int {
		var n int
		err := pgOf(t, b).Pool().QueryRow(context.Background(), `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		require.NoError(t, err)
		return n
	},
	Durable: func(t *testing.T, b storage.Backend) {
		for _, setting := range []string{"fsync", "synchronous_commit"} {
			var v string
			require.NoError(t, pgOf(t, b).Pool().QueryRow(context.Background(), "SHOW "+setting).Scan(&v))
			require.Equal(t, "on", v, "%s must be on: a 200 means the data is on disk", setting)
		}
	},
}

func TestConformance(t *testing.T) {
	storetest.Run(t, Harness)
}
