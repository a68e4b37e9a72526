package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
)

// Benchmarks measure the stores through their interfaces, on a real file
// with the production settings (WAL, synchronous=FULL: every Accept waits
// for an fsync). Run them with
//
//	go test -run '^$' -bench . ./internal/storage/sqlite/

func benchDB(b *testing.B) *DB {
	b.Helper()
	db, err := Open(context.Background(), Options{Path: filepath.Join(b.TempDir(), "bench.db"), Migrate: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	return db
}

// benchmarkAccept stores one sendToDevice per iteration addressed to
// devices devices by id, ten devices per user (a client sharing a room key
// with everyone in a room).
func benchmarkAccept(b *testing.B, devices int) {
	ctx := context.Background()
	db := benchDB(b)
	msgs := inbox.Messages{}
	for i := range devices {
		user := fmt.Sprintf("@u%d:example.org", i/10)
		device := fmt.Sprintf("D%d", i%10)
		if _, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: user, DeviceID: device}); err != nil {
			b.Fatal(err)
		}
		if msgs[user] == nil {
			msgs[user] = map[string]json.RawMessage{}
		}
		msgs[user][device] = []byte(`{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":{"k":{"type":0,"body":"AwogZm9vYmFy"}}}`)
	}
	store := db.Inbox()
	b.ResetTimer()
	for i := range b.N {
		a, err := inbox.BuildAccept("example.org", inbox.TxnKey{UserID: "@s:example.org", DeviceID: "S", EventType: "m.room.encrypted", TxnID: fmt.Sprint(i)}, msgs)
		if err != nil {
			b.Fatal(err)
		}
		res, err := store.Accept(ctx, a)
		if err != nil {
			b.Fatal(err)
		}
		if res.Delivered != devices {
			b.Fatalf("delivered %d of %d", res.Delivered, devices)
		}
	}
	b.ReportMetric(float64(b.N*devices)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkAccept1Devices(b *testing.B)    { benchmarkAccept(b, 1) }
func BenchmarkAccept100Devices(b *testing.B)  { benchmarkAccept(b, 100) }
func BenchmarkAccept1000Devices(b *testing.B) { benchmarkAccept(b, 1000) }

// benchmarkSyncDrain fills one device's inbox with pending messages (not
// timed) and then drains it as a client does: sync after sync, each
// acknowledging the previous batch and fetching the next 100. A drain of a
// large backlog should cost about the same per message as a small one.
func benchmarkSyncDrain(b *testing.B, pending int) {
	ctx := context.Background()
	db := benchDB(b)
	d, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@r:example.org", DeviceID: "R"})
	if err != nil {
		b.Fatal(err)
	}
	dev := inbox.Recipient{UserID: d.UserID, NID: d.NID}
	store := db.Inbox()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		fill(b, db, dev, pending)
		b.StartTimer()
		q := inbox.SyncQuery{Device: dev, Limit: inbox.DefaultSyncLimit}
		got := 0
		for {
			res, err := store.Sync(ctx, q)
			if err != nil {
				b.Fatal(err)
			}
			if len(res.Messages) == 0 {
				break
			}
			got += len(res.Messages)
			q.AckLo, q.AckHi = q.AckHi, res.Messages[len(res.Messages)-1].Pos
		}
		if got != pending {
			b.Fatalf("drained %d of %d", got, pending)
		}
	}
	b.ReportMetric(float64(b.N*pending)/b.Elapsed().Seconds(), "msgs/s")
}

// fill writes n pending messages for dev in one statement: the backlog is
// the benchmark's premise, not what it measures.
func fill(b *testing.B, db *DB, dev inbox.Recipient, n int) {
	ctx := context.Background()
	err := db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)
			INSERT INTO device_inbox (user_id, device_nid, sender, type, content, enqueued_at)
			SELECT ?, ?, '@s:example.org', 'm.room.encrypted', CAST('{"n":' || i || '}' AS BLOB), ? FROM c`,
			n, dev.UserID, dev.NID, micros(time.Now()))
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

func BenchmarkSyncDrain100Pending(b *testing.B)    { benchmarkSyncDrain(b, 100) }
func BenchmarkSyncDrain100000Pending(b *testing.B) { benchmarkSyncDrain(b, 100_000) }
