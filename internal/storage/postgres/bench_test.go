package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/testdb"
)

// benchContent is a to-device payload of a realistic size (an Olm-encrypted
// room key share is 0.5–2 KiB).
var benchContent = json.RawMessage(`{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":"` + strings.Repeat("A", 480) + `"}`)

func openBench(b *testing.B, strategy postgres.WriteStrategy) *postgres.DB {
	b.Helper()
	ctx := context.Background()
	db, err := postgres.Open(ctx, postgres.Options{URL: testdb.New(b), Migrate: true, InboxWrite: strategy})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	return db
}

// mkDevices creates n devices of one user and returns their nids.
func mkDevices(b *testing.B, db *postgres.DB, user string, n int) []int64 {
	b.Helper()
	nids := make([]int64, n)
	for i := range n {
		d, _, err := db.Devices().PutDevice(context.Background(), devicelists.PutDevice{UserID: user, DeviceID: fmt.Sprintf("D%05d", i)})
		if err != nil {
			b.Fatal(err)
		}
		nids[i] = d.NID
	}
	return nids
}

var fanOuts = []int{1, 100, 1000}

// BenchmarkAcceptFanOut measures a whole accepted sendToDevice (validation,
// transaction record, device locks, rows, NOTIFY, commit) to n devices, for
// each way of writing the rows.
func BenchmarkAcceptFanOut(b *testing.B) {
	for _, s := range []struct {
		name string
		w    postgres.WriteStrategy
	}{{"unnest", postgres.WriteUnnest}, {"copy", postgres.WriteCopy}} {
		for _, n := range fanOuts {
			b.Run(fmt.Sprintf("%s/devices=%d", s.name, n), func(b *testing.B) {
				db := openBench(b, s.w)
				mkDevices(b, db, "@bob:example.org", n)
				svc := inbox.New(inbox.Config{ServerName: "example.org", Store: db.Inbox()})
				msgs := inbox.Messages{"@bob:example.org": {"*": benchContent}}
				ctx := context.Background()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					if _, err := svc.Send(ctx, inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.room.encrypted", TxnID: fmt.Sprint(i)}, msgs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkRawCopy is the physical baseline: the same rows COPYed straight
// into the same table, one transaction per fan-out, nothing else.
func BenchmarkRawCopy(b *testing.B) {
	for _, n := range fanOuts {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			db := openBench(b, postgres.WriteUnnest)
			nids := mkDevices(b, db, "@bob:example.org", n)
			ctx := context.Background()
			b.ResetTimer()
			for b.Loop() {
				err := pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"device_inbox"},
						[]string{"user_id", "device_nid", "sender", "type", "content"},
						copyRows("@bob:example.org", nids))
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func copyRows(user string, nids []int64) pgx.CopyFromSource {
	i := 0
	return pgx.CopyFromFunc(func() ([]any, error) {
		if i == len(nids) {
			return nil, nil
		}
		r := []any{user, nids[i], "@alice:example.org", "m.room.encrypted", []byte(benchContent)}
		i++
		return r, nil
	})
}

// BenchmarkSyncDrain is one steady-state sync: acknowledge the previous 100,
// fetch the next 100, from a device with a constant backlog. The cost must
// not grow with the backlog.
func BenchmarkSyncDrain(b *testing.B) {
	for _, pending := range []int{100, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			db := openBench(b, postgres.WriteUnnest)
			ctx := context.Background()
			nid := mkDevices(b, db, "@bob:example.org", 1)[0]
			dev := inbox.Recipient{UserID: "@bob:example.org", NID: nid}
			fill := func(n int) {
				nids := make([]int64, n)
				for i := range nids {
					nids[i] = nid
				}
				err := pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"device_inbox"},
						[]string{"user_id", "device_nid", "sender", "type", "content"}, copyRows(dev.UserID, nids))
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			fill(pending)
			if _, err := db.Pool().Exec(ctx, "VACUUM ANALYZE device_inbox"); err != nil {
				b.Fatal(err)
			}
			svc := inbox.New(inbox.Config{ServerName: "example.org", Store: db.Inbox()})
			pos := inbox.Position{NID: nid}
			b.ResetTimer()
			for b.Loop() {
				batch, err := svc.Sync(ctx, dev, pos, 100)
				if err != nil {
					b.Fatal(err)
				}
				if len(batch.Events) != 100 {
					b.Fatalf("got %d events, want 100", len(batch.Events))
				}
				pos = batch.Next
				b.StopTimer()
				fill(100) // keep the backlog constant
				b.StartTimer()
			}
		})
	}
}
