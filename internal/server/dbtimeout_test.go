package server_test

import (
	"context"
	dbsql "database/sql"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

// A short --database-timeout for the tests: the lock below is held until
// the answer has arrived, so how long the deadline is never decides the
// outcome, only how long the test waits.
const testDatabaseTimeout = 300 * time.Millisecond

// frozenSend sends t1 while the database is frozen, expects a fast 503
// M_UNAVAILABLE (the freeze is lifted only after the answer arrived, so the
// answer cannot be a lucky late success), then lifts the freeze and shows
// the client's retry of the same txnId delivers the message exactly once:
// whether or not the first attempt's commit happened in the end, the
// transaction record deduplicates the retry (invariant 2).
func frozenSend(t *testing.T, in *servertest.Instance, syncFrozen bool, freeze func() (thaw func())) {
	const alice, bob = "@alice:localhost", "@bob:localhost"
	in.PutDevice(t, alice, "A1", "tok-alice")
	in.PutDevice(t, bob, "B1", "tok-bob")
	first := in.Sync(t, "tok-bob", "", 0)
	send := func() servertest.Response {
		return in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.test/t1", "tok-alice",
			map[string]any{"messages": map[string]any{bob: map[string]any{"B1": map[string]any{"n": 1}}}})
	}

	thaw := freeze()
	r := send()
	frozenSync := in.RawSync(context.Background(), t, "tok-bob", first.NextBatch, 0)
	thaw() // only now: both answers came while the database was frozen
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "send: %s", r.Body)
	require.Equal(t, "M_UNAVAILABLE", r.Errcode(t))
	if syncFrozen {
		require.Equal(t, http.StatusServiceUnavailable, frozenSync.Status, "a sync's check has a deadline too: %s", frozenSync.Body)
		require.Equal(t, "M_UNAVAILABLE", frozenSync.Errcode(t))
	}

	// The client retries until the database answers; the first attempt's
	// leftovers may hold the transaction record for a moment.
	for i := 0; ; i++ {
		r = send()
		if r.Status != http.StatusServiceUnavailable || i == 50 {
			break
		}
	}
	require.Equal(t, http.StatusOK, r.Status, "retry: %s", r.Body)
	require.Equal(t, http.StatusOK, send().Status, "a second retry is deduplicated")
	got := in.Sync(t, "tok-bob", first.NextBatch, 0)
	require.Len(t, got.ToDevice.Events, 1, "delivered exactly once")
	require.Empty(t, in.Sync(t, "tok-bob", got.NextBatch, 0).ToDevice.Events)
}

// With PostgreSQL frozen for todeviced — a transaction elsewhere holds an
// ACCESS EXCLUSIVE lock on the inbox, so every statement touching it waits
// and the server never answers — a send answers 503 within
// --database-timeout instead of hanging, and never 200 after the fact.
func TestDatabaseTimeoutPostgres(t *testing.T) {
	dbURL := testdb.New(t)
	cfg := servertest.Config(dbURL)
	cfg.DatabaseTimeout = testDatabaseTimeout
	in := servertest.Start(t, cfg, server.Options{})
	frozenSend(t, in, true, func() func() {
		ctx := testCtx(t)
		conn, err := pgx.Connect(ctx, dbURL)
		require.NoError(t, err)
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `LOCK TABLE device_inbox IN ACCESS EXCLUSIVE MODE`)
		require.NoError(t, err)
		return func() {
			require.NoError(t, tx.Rollback(ctx))
			require.NoError(t, conn.Close(ctx))
		}
	})
}

// The same on SQLite: another process holds the database's write lock, so
// the server's writer cannot begin and its readers wait behind it.
func TestDatabaseTimeoutSQLite(t *testing.T) {
	path := t.TempDir() + "/todeviced.db"
	cfg := servertest.Config("sqlite:" + path)
	cfg.DatabaseTimeout = testDatabaseTimeout
	in := servertest.Start(t, cfg, server.Options{})
	frozenSend(t, in, false, func() func() {
		ctx := testCtx(t)
		db, err := dbsql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
		require.NoError(t, err)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		// An exclusive transaction: in WAL mode it stops the writer; the
		// readers keep reading their snapshot, so a sync that only reads is
		// not frozen here, only one that acknowledges.
		_, err = conn.ExecContext(ctx, `BEGIN EXCLUSIVE`)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, `DELETE FROM send_txns WHERE user_id = 'nobody'`)
		require.NoError(t, err)
		return func() {
			_, err := conn.ExecContext(ctx, `ROLLBACK`)
			require.NoError(t, err)
			require.NoError(t, conn.Close())
			require.NoError(t, db.Close())
		}
	})
}
