package httpapi_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

// BenchmarkWakeUpLatency measures, per message, the time from the moment the
// sender's PUT returned (the send has committed) to the moment the waiting
// long-poll's response arrived, with the long-poll on the same instance and
// on another instance of the same database (woken through LISTEN/NOTIFY).
// It reports p50 and p99 in milliseconds.
func BenchmarkWakeUpLatency(b *testing.B) {
	for _, where := range []string{"same-instance", "other-instance"} {
		b.Run(where, func(b *testing.B) {
			url := testdb.New(b)
			a := servertest.Start(b, servertest.Config(url), server.Options{})
			waiter := a
			if where == "other-instance" {
				waiter = servertest.Start(b, servertest.Config(url), server.Options{})
			}
			a.PutDevice(b, alice, "A1", "tok-alice")
			a.PutDevice(b, bob, "B1", "tok-bob")
			since := waiter.Sync(b, "tok-bob", "", 0).NextBatch
			var samples []time.Duration
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				type result struct {
					at   time.Time
					next string
				}
				got := make(chan result, 1)
				go func() {
					s := waiter.Sync(b, "tok-bob", since, time.Minute)
					got <- result{time.Now(), s.NextBatch}
				}()
				b.StopTimer()
				for waiter.Hub().Len() == 0 {
					time.Sleep(50 * time.Microsecond)
				}
				b.StartTimer()
				a.Send(b, "tok-alice", "m.test", fmt.Sprint(i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
				committed := time.Now()
				r := <-got
				samples = append(samples, r.at.Sub(committed))
				since = r.next
			}
			slices.Sort(samples)
			pct := func(p float64) float64 {
				return float64(samples[int(p*float64(len(samples)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
		})
	}
}
