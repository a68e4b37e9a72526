package sqlite

import (
	"context"
	"database/sql"
	"errors"
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

	busy, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- db.write(ctx, func(*sql.Tx) error { close(busy); <-release; return nil })
	}()
	<-busy
	wctx, wcancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- db.write(wctx, func(*sql.Tx) error { return nil }) }()
	for db.WaitingWriters() != 1 {
		time.Sleep(time.Millisecond)
	}
	wcancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	require.Zero(t, db.WaitingWriters())
	close(release)
	require.NoError(t, <-first)
	require.NoError(t, db.write(ctx, func(*sql.Tx) error { return nil }), "the writer is free again")
}

// TestGroupCommit checks that writers queued behind a transaction share the
// next commit, each in a savepoint: a failing one rolls back only its own
// writes.
func TestGroupCommit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := Open(ctx, Options{Path: filepath.Join(t.TempDir(), "t.db"), Migrate: true})
	require.NoError(t, err)
	defer db.Close()

	busy, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = db.write(ctx, func(*sql.Tx) error { close(busy); <-release; return nil })
	}()
	<-busy
	insert := func(id string, fail bool) func(*sql.Tx) error {
		return func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO send_txns (user_id, device_id, event_type, txn_id, response) VALUES ('u', 'd', 't', ?, x'')`, id); err != nil {
				return err
			}
			if fail {
				return errors.New("this request fails after writing")
			}
			return nil
		}
	}
	results := make(chan string, 3)
	for _, w := range []struct {
		id   string
		fail bool
	}{{"a", false}, {"b", true}, {"c", false}} {
		go func() {
			if err := db.writeSend(ctx, insert(w.id, w.fail)); err != nil {
				results <- w.id + ":err"
			} else {
				results <- w.id + ":ok"
			}
		}()
	}
	for db.WaitingWriters() != 3 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	got := map[string]bool{}
	for range 3 {
		got[<-results] = true
	}
	require.Equal(t, map[string]bool{"a:ok": true, "b:err": true, "c:ok": true}, got)
	var ids []string
	rows, err := db.readers.QueryContext(ctx, `SELECT txn_id FROM send_txns ORDER BY txn_id`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"a", "c"}, ids, "the failed request's write was rolled back, the others committed")
	groups, sends := db.SendGroups()
	require.Equal(t, int64(1), groups, "one group of sends committed")
	require.Equal(t, int64(2), sends, "the failed send is not counted")
}
