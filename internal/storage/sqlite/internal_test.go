package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestConnectionSettings checks the pragmas of every connection, since the
// driver applies them per connection: a reader opened later must be as
// read-only as the first, and the writer as durable.
func TestConnectionSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := Open(ctx, Options{Path: filepath.Join(t.TempDir(), "t.db"), Migrate: true, MaxReaders: 3})
	require.NoError(t, err)
	defer db.Close()

	pragma := func(c *sql.Conn, name string) string {
		var v string
		require.NoError(t, c.QueryRowContext(ctx, "PRAGMA "+name).Scan(&v))
		return v
	}
	w, err := db.writer.Conn(ctx)
	require.NoError(t, err)
	require.Equal(t, "wal", pragma(w, "journal_mode"))
	require.Equal(t, "2", pragma(w, "synchronous"), "FULL")
	require.Equal(t, "1", pragma(w, "foreign_keys"))
	require.Equal(t, "5000", pragma(w, "busy_timeout"))
	require.Equal(t, "67108864", pragma(w, "journal_size_limit"))
	require.Equal(t, "0", pragma(w, "query_only"))
	require.NoError(t, w.Close())

	// Hold every reader at once, so each one is a distinct connection.
	var readers []*sql.Conn
	for range 3 {
		c, err := db.readers.Conn(ctx)
		require.NoError(t, err)
		readers = append(readers, c)
	}
	for _, c := range readers {
		require.Equal(t, "1", pragma(c, "query_only"))
		require.Equal(t, "5000", pragma(c, "busy_timeout"))
		require.Equal(t, "wal", pragma(c, "journal_mode"))
		_, err := c.ExecContext(ctx, `DELETE FROM device_inbox`)
		require.ErrorContains(t, err, "readonly", "a reader refuses to write")
		require.NoError(t, c.Close())
	}
	require.Equal(t, 3, db.readers.Stats().MaxOpenConnections)
	require.Equal(t, 1, db.writer.Stats().MaxOpenConnections)
}

// TestWriterQueueCountsWaiters checks the counter behind WaitingWriters and
// that a queued writer gives up when its context ends.
func TestWriterQueueCountsWaiters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := Open(ctx, Options{Path: filepath.Join(t.TempDir(), "t.db"), Migrate: true})
	require.NoError(t, err)
	defer db.Close()

	require.NoError(t, db.acquireWriter(ctx))
	wctx, wcancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- db.write(wctx, func(*sql.Tx) error { return nil }) }()
	for db.WaitingWriters() != 1 {
		time.Sleep(time.Millisecond)
	}
	wcancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	require.Zero(t, db.WaitingWriters())
	<-db.writeSlot
	require.NoError(t, db.write(ctx, func(*sql.Tx) error { return nil }), "the slot is free again")
}
