package postgres_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/storage/storetest"
	"github.com/todeviced/todeviced/internal/testdb"
)

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

// pgTarget runs the shared benchmarks on PostgreSQL with a write strategy.
func pgTarget(strategy postgres.WriteStrategy) storetest.BenchTarget {
	return storetest.BenchTarget{
		Open: func(b *testing.B) storetest.Stores { return openBench(b, strategy) },
		Fill: func(b *testing.B, s storetest.Stores, dev inbox.Recipient, n int) {
			copyPending(b, s.(*postgres.DB), dev, n)
		},
	}
}

// BenchmarkAccept is the shared accept benchmark (fan-out 1, 100, 1 000) with
// the default write strategy (unnest below postgres.CopyThreshold rows, COPY
// from there on).
func BenchmarkAccept(b *testing.B) { storetest.BenchAccept(b, pgTarget(postgres.WriteAuto)) }

// BenchmarkAcceptViaUnnest writes every fan-out with one INSERT … SELECT FROM
// unnest(…).
func BenchmarkAcceptViaUnnest(b *testing.B) { storetest.BenchAccept(b, pgTarget(postgres.WriteUnnest)) }

// BenchmarkAcceptViaCopy streams every fan-out's rows with COPY.
func BenchmarkAcceptViaCopy(b *testing.B) { storetest.BenchAccept(b, pgTarget(postgres.WriteCopy)) }

// BenchmarkSyncDrain is the shared steady-state sync benchmark.
func BenchmarkSyncDrain(b *testing.B) { storetest.BenchSyncDrain(b, pgTarget(postgres.WriteAuto)) }

// BenchmarkRawCopy is the physical baseline: the same rows COPYed straight
// into the same table, one transaction per fan-out, nothing else.
func BenchmarkRawCopy(b *testing.B) {
	for _, n := range storetest.FanOuts {
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

// BenchmarkAcceptConcurrent is the shared concurrent accept benchmark:
// storetest.ConcurrentSenders goroutines sending to the same 100 devices.
func BenchmarkAcceptConcurrent(b *testing.B) {
	storetest.BenchAcceptConcurrent(b, pgTarget(postgres.WriteAuto))
}

// BenchmarkAcceptSmallFanOuts is the shared small fan-out benchmark: 8
// senders, fan-out 4 and 20 to named devices of the same 100.
func BenchmarkAcceptSmallFanOuts(b *testing.B) {
	storetest.BenchAcceptSmallFanOuts(b, pgTarget(postgres.WriteAuto))
}

// BenchmarkRawCopySmallFanOuts is its physical baseline, as the load
// generator's --baseline: the same rows COPYed from as many goroutines, one
// transaction per send, no locks, no order, no transaction record.
func BenchmarkRawCopySmallFanOuts(b *testing.B) {
	for _, fanOut := range storetest.SmallFanOuts {
		b.Run(fmt.Sprintf("fanout=%d", fanOut), func(b *testing.B) {
			db := openBench(b, postgres.WriteUnnest)
			ctx := context.Background()
			nidOf := map[string]int64{}
			for k, nid := range storetest.PutBenchDevices(b, db.Devices(), storetest.SmallFanOutDevices, storetest.SmallFanOutDevice) {
				user, dev := storetest.SmallFanOutDevice(k)
				nidOf[user+"|"+dev] = nid
			}
			var next atomic.Int64
			b.SetParallelism((storetest.ConcurrentSenders + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					recipients := storetest.SmallFanOutRecipients(int(next.Add(1)), fanOut)
					i := 0
					rows := pgx.CopyFromFunc(func() ([]any, error) {
						if i == len(recipients) {
							return nil, nil
						}
						r := recipients[i]
						i++
						return []any{r.UserID, nidOf[r.UserID+"|"+r.DeviceID], "@alice:example.org", "m.room.encrypted", []byte(storetest.BenchContent)}, nil
					})
					err := pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
						_, err := tx.CopyFrom(ctx, pgx.Identifier{"device_inbox"},
							[]string{"user_id", "device_nid", "sender", "type", "content"}, rows)
						return err
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
			b.ReportMetric(float64(fanOut*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkRawCopyConcurrent is its physical baseline: the same rows COPYed
// from as many goroutines, one transaction per fan-out, no locks, no order.
func BenchmarkRawCopyConcurrent(b *testing.B) {
	db := openBench(b, postgres.WriteUnnest)
	nids := mkDevices(b, db, "@bob:example.org", 100)
	ctx := context.Background()
	b.SetParallelism((storetest.ConcurrentSenders + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			err := pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
				_, err := tx.CopyFrom(ctx, pgx.Identifier{"device_inbox"},
					[]string{"user_id", "device_nid", "sender", "type", "content"},
					copyRows("@bob:example.org", nids))
				return err
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(len(nids)*b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func copyRows(user string, nids []int64) pgx.CopyFromSource {
	i := 0
	return pgx.CopyFromFunc(func() ([]any, error) {
		if i == len(nids) {
			return nil, nil
		}
		r := []any{user, nids[i], "@alice:example.org", "m.room.encrypted", []byte(storetest.BenchContent)}
		i++
		return r, nil
	})
}

// copyPending writes n pending messages for dev with COPY.
func copyPending(b *testing.B, db *postgres.DB, dev inbox.Recipient, n int) {
	ctx := context.Background()
	nids := make([]int64, n)
	for i := range nids {
		nids[i] = dev.NID
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
