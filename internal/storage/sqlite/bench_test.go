package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlite"
	"github.com/todeviced/todeviced/internal/storage/storetest"
)

// Benchmarks measure the stores through their interfaces, on a real file
// with the production settings (WAL, synchronous=FULL: every Accept waits
// for an fsync). Run them with
//
//	go test -run '^$' -bench . ./internal/storage/sqlite/

func benchDB(b *testing.B) *sqlite.DB {
	b.Helper()
	db, err := sqlite.Open(context.Background(), sqlite.Options{Path: filepath.Join(b.TempDir(), "bench.db"), Migrate: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	return db
}

// sqliteTarget runs the shared benchmarks on SQLite.
var sqliteTarget = storetest.BenchTarget{
	Open: func(b *testing.B) storetest.Stores { return benchDB(b) },
	Fill: func(b *testing.B, s storetest.Stores, dev inbox.Recipient, n int) { fill(b, s.(*sqlite.DB), dev, n) },
}

// BenchmarkAccept is the shared accept benchmark (fan-out 1, 100, 1 000).
func BenchmarkAccept(b *testing.B) { storetest.BenchAccept(b, sqliteTarget) }

// BenchmarkAcceptConcurrent is the shared concurrent accept benchmark.
func BenchmarkAcceptConcurrent(b *testing.B) { storetest.BenchAcceptConcurrent(b, sqliteTarget) }

// BenchmarkAcceptSmallFanOuts is the shared small fan-out benchmark.
func BenchmarkAcceptSmallFanOuts(b *testing.B) { storetest.BenchAcceptSmallFanOuts(b, sqliteTarget) }

// BenchmarkSyncDrain is the shared steady-state sync benchmark.
func BenchmarkSyncDrain(b *testing.B) { storetest.BenchSyncDrain(b, sqliteTarget) }

// fill writes n pending messages for dev in one statement, on a connection
// of its own (the busy timeout lets it wait for the store's writer).
func fill(b *testing.B, db *sqlite.DB, dev inbox.Recipient, n int) {
	ctx := context.Background()
	conn, err := sql.Open("sqlite", "file:"+db.Path()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	err = func() error {
		_, err := conn.ExecContext(ctx, `
			WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)
			INSERT INTO device_inbox (user_id, device_nid, sender, type, content, enqueued_at)
			SELECT ?, ?, '@s:example.org', 'm.room.encrypted', ?, ? FROM c`,
			n, dev.UserID, dev.NID, []byte(storetest.BenchContent), time.Now().UnixMicro())
		return err
	}()
	if err != nil {
		b.Fatal(err)
	}
}
