package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
)

// Stores is what the benchmarks use of a backend.
type Stores interface {
	Inbox() inbox.Store
	Devices() devicelists.Store
}

// BenchTarget describes a backend to the shared benchmarks.
type BenchTarget struct {
	// Open returns a fresh, migrated database, closed at cleanup.
	Open func(b *testing.B) Stores
	// Fill writes n pending messages for dev in bulk: a backlog is the
	// premise of a benchmark, not what it measures.
	Fill func(b *testing.B, s Stores, dev inbox.Recipient, n int)
}

// BenchContent is a to-device payload of a realistic size: an Olm-encrypted
// room key share is 0.5–2 KiB.
var BenchContent = json.RawMessage(`{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":"` + strings.Repeat("A", 480) + `"}`)

// FanOuts are the fan-outs the accept benchmarks measure.
var FanOuts = []int{1, 100, 1000}

// PutBenchDevices creates n devices in devices, the k-th named by
// name(k), and returns their nids in that order.
func PutBenchDevices(b *testing.B, devices devicelists.Store, n int, name func(k int) (userID, deviceID string)) []int64 {
	nids := make([]int64, n)
	for k := range n {
		user, dev := name(k)
		d, _, err := devices.PutDevice(context.Background(), devicelists.PutDevice{UserID: user, DeviceID: dev})
		if err != nil {
			b.Fatal(err)
		}
		nids[k] = d.NID
	}
	return nids
}

// sendService opens a fresh database with n devices, the k-th named by
// name, and returns the inbox service sending on it.
func (t BenchTarget) sendService(b *testing.B, n int, name func(k int) (userID, deviceID string)) *inbox.Service {
	s := t.Open(b)
	PutBenchDevices(b, s.Devices(), n, name)
	return inbox.New(inbox.Config{ServerName: "example.org", Store: s.Inbox()})
}

// bobsDevice is the k-th of one user's many devices.
func bobsDevice(k int) (string, string) { return "@bob:example.org", fmt.Sprintf("D%05d", k) }

// BenchAccept measures whole accepted sendToDevice requests (validation, EDU
// split, transaction record, device locks, rows, wake-ups, commit) to 1, 100
// and 1 000 devices, and reports messages per second.
func BenchAccept(b *testing.B, t BenchTarget) {
	for _, n := range FanOuts {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			svc := t.sendService(b, n, bobsDevice)
			ctx := context.Background()
			msgs := inbox.Messages{"@bob:example.org": {"*": BenchContent}}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				k := inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.room.encrypted", TxnID: fmt.Sprint(i)}
				if _, err := svc.Send(ctx, k, msgs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// ConcurrentSenders is how many goroutines BenchAcceptConcurrent sends
// from, as the load generator's default senders.
const ConcurrentSenders = 8

// BenchAcceptConcurrent measures sends from ConcurrentSenders goroutines at
// once, each to "*" of the same user with 100 devices: the worst case for
// per-device ordering, since every send needs every device. It reports
// messages per second; compare with a concurrent raw COPY of the same rows.
func BenchAcceptConcurrent(b *testing.B, t BenchTarget) {
	const devices = 100
	svc := t.sendService(b, devices, bobsDevice)
	ctx := context.Background()
	msgs := inbox.Messages{"@bob:example.org": {"*": BenchContent}}
	var next atomic.Int64
	b.SetParallelism((ConcurrentSenders + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.room.encrypted", TxnID: fmt.Sprint(next.Add(1))}
			if _, err := svc.Send(ctx, k, msgs); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(devices*b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// SmallFanOuts are the fan-outs of BenchAcceptSmallFanOuts: those of real
// to-device traffic (a room key to a few devices), and the load generator's
// default and its fan-out 20.
var SmallFanOuts = []int{4, 20}

// SmallFanOutDevices are the devices the small fan-outs go to: 50 users
// with 2 devices each, as the load generator's default load.
const SmallFanOutDevices = 100

// SmallFanOutDevice is the k-th of them.
func SmallFanOutDevice(k int) (userID, deviceID string) {
	return fmt.Sprintf("@u%02d:example.org", k/2), fmt.Sprint("D", k%2)
}

// SmallFanOutRecipients is the i-th send's recipients at a fan-out: named
// devices (user u<k>, device D<k%2>), spread over SmallFanOutDevices.
func SmallFanOutRecipients(i, fanOut int) []inbox.LocalMessage {
	out := make([]inbox.LocalMessage, 0, fanOut)
	for j := range fanOut {
		k := (i*7 + j*13) % SmallFanOutDevices
		user, dev := SmallFanOutDevice(k)
		out = append(out, inbox.LocalMessage{UserID: user, DeviceID: dev})
	}
	return out
}

// BenchAcceptSmallFanOuts measures sends from ConcurrentSenders goroutines
// at once, each to a few named devices of the same SmallFanOutDevices: the
// shape of the load generator's default load, without HTTP. It reports
// sends and messages per second; compare with the raw COPY of the same rows
// (BenchmarkRawCopySmallFanOuts on PostgreSQL).
func BenchAcceptSmallFanOuts(b *testing.B, t BenchTarget) {
	for _, fanOut := range SmallFanOuts {
		b.Run(fmt.Sprintf("fanout=%d", fanOut), func(b *testing.B) {
			svc := t.sendService(b, SmallFanOutDevices, SmallFanOutDevice)
			ctx := context.Background()
			var next atomic.Int64
			b.SetParallelism((ConcurrentSenders + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					msgs := inbox.Messages{}
					for _, r := range SmallFanOutRecipients(int(i), fanOut) {
						if msgs[r.UserID] == nil {
							msgs[r.UserID] = map[string]json.RawMessage{}
						}
						msgs[r.UserID][r.DeviceID] = BenchContent
					}
					k := inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.room.encrypted", TxnID: fmt.Sprint(i)}
					if _, err := svc.Send(ctx, k, msgs); err != nil {
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

// BenchSyncDrain is one steady-state sync: acknowledge the previous 100,
// fetch the next 100, from a device whose backlog is kept constant (refilled
// outside the timer) at 100 or 100 000 messages. The cost must not grow with
// the backlog.
func BenchSyncDrain(b *testing.B, t BenchTarget) {
	for _, pending := range []int{100, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			s := t.Open(b)
			ctx := context.Background()
			d, _, err := s.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: "B"})
			if err != nil {
				b.Fatal(err)
			}
			dev := inbox.Recipient{UserID: d.UserID, NID: d.NID}
			t.Fill(b, s, dev, pending)
			svc := inbox.New(inbox.Config{ServerName: "example.org", Store: s.Inbox()})
			pos := inbox.Position{NID: dev.NID}
			b.ResetTimer()
			for b.Loop() {
				batch, err := svc.Sync(ctx, dev, pos, inbox.DefaultSyncLimit)
				if err != nil {
					b.Fatal(err)
				}
				if len(batch.Events) != inbox.DefaultSyncLimit {
					b.Fatalf("got %d events, want %d", len(batch.Events), inbox.DefaultSyncLimit)
				}
				pos = batch.Next
				b.StopTimer()
				t.Fill(b, s, dev, inbox.DefaultSyncLimit)
				b.StartTimer()
			}
			b.ReportMetric(float64(inbox.DefaultSyncLimit*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
