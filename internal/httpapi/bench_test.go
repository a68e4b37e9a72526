package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/todeviced/todeviced/internal/inbox"
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

// BenchmarkSyncCheck measures one /sync check of a device whose client
// keeps up, through the real router (no network): the access token, the
// acknowledgement of the message the previous sync handed out, the fetch of
// the one sent since, the device-list head and the one-time-key counts, and
// the JSON answer. The send before each sync is not timed.
//
//	go test -run XXX -bench SyncCheck -benchtime 3s ./internal/httpapi/
//
// diskBackends are the databases BenchmarkSyncCheck and
// BenchmarkLongPollDelivery run on: SQLite's file on disk, so a commit
// pays its fsync (the client benchmarks' benchBackends put it in memory).
var diskBackends = []struct {
	name string
	url  func(b *testing.B) string
}{
	{"postgres", func(b *testing.B) string { return testdb.New(b) }},
	{"sqlite", func(b *testing.B) string { return "sqlite:" + filepath.Join(b.TempDir(), "todeviced.db") }},
}

func BenchmarkSyncCheck(b *testing.B) {
	for _, be := range diskBackends {
		b.Run(be.name, func(b *testing.B) { benchmarkSyncCheck(b, be.url(b)) })
	}
}

func benchmarkSyncCheck(b *testing.B, url string) {
	ctx := context.Background()
	srv, err := server.New(ctx, servertest.Config(url), nil, server.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	h := srv.Handler()
	for _, d := range []struct{ user, device, token string }{{alice, "A1", "tok-alice"}, {bob, "B1", "tok-bob"}} {
		if _, _, err := srv.Devices().PutDevice(ctx, d.user, d.device, d.token, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	sync := func(since string) (string, int) {
		req := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync?timeout=0&since="+since, nil)
		req.Header.Set("Authorization", "Bearer tok-bob")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("sync: %d %s", rec.Code, rec.Body)
		}
		var s servertest.SyncResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
			b.Fatal(err)
		}
		return s.NextBatch, len(s.ToDevice.Events)
	}
	send := func(i int) {
		_, err := srv.Inbox().Send(ctx, inbox.TxnKey{UserID: alice, DeviceID: "A1", EventType: "m.test", TxnID: fmt.Sprint(i)},
			inbox.Messages{bob: {"B1": json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}})
		if err != nil {
			b.Fatal(err)
		}
	}
	since, _ := sync("")
	for i := range 10 { // warm the connections' statement caches
		send(-i - 1)
		since, _ = sync(since)
	}
	i := 0
	for b.Loop() {
		b.StopTimer()
		send(i)
		i++
		b.StartTimer()
		next, n := sync(since)
		if n != 1 {
			b.Fatalf("sync %d handed out %d messages, want 1", i, n)
		}
		since = next
	}
}

// BenchmarkLongPollDelivery is what one message costs a device that
// long-polls: a /sync with the since of the previous answer registers and
// waits, the message is sent, the wake-up's check acknowledges and fetches
// it, and the answer is written. With quiet=true the replica hears every
// wake-up and the long-poll waits without its first check (devicesync's
// quiet devices); with quiet=false the hub is deaf, as while a listener
// reconnects, and every long-poll checks first (the behaviour before). The
// send is timed too, and each iteration sends only once the long-poll has
// checked or skipped, so the deaf run's first check finds nothing.
//
//	go test -run XXX -bench LongPollDelivery -benchtime 3s ./internal/httpapi/
func BenchmarkLongPollDelivery(b *testing.B) {
	for _, be := range diskBackends {
		for _, quiet := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/quiet=%v", be.name, quiet), func(b *testing.B) { benchmarkLongPollDelivery(b, be.url(b), quiet) })
		}
	}
}

func benchmarkLongPollDelivery(b *testing.B, url string, quiet bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, servertest.Config(url), nil, server.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	srv.Start(ctx)
	for srv.Hub().Deaf() { // the PostgreSQL listener connects
		time.Sleep(time.Millisecond)
	}
	if !quiet {
		srv.Hub().SetDeaf(true)
	}
	h := srv.Handler()
	for _, d := range []struct{ user, device, token string }{{alice, "A1", "tok-alice"}, {bob, "B1", "tok-bob"}} {
		if _, _, err := srv.Devices().PutDevice(ctx, d.user, d.device, d.token, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	type answer struct {
		since string
		n     int
		err   error
	}
	sync := func(since, timeout string) answer {
		req := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync?timeout="+timeout+"&since="+since, nil)
		req.Header.Set("Authorization", "Bearer tok-bob")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			return answer{err: fmt.Errorf("sync: %d %s", rec.Code, rec.Body)}
		}
		var s servertest.SyncResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
			return answer{err: err}
		}
		return answer{since: s.NextBatch, n: len(s.ToDevice.Events)}
	}
	send := func(i int) {
		_, err := srv.Inbox().Send(ctx, inbox.TxnKey{UserID: alice, DeviceID: "A1", EventType: "m.test", TxnID: fmt.Sprint(i)},
			inbox.Messages{bob: {"B1": json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}})
		if err != nil {
			b.Fatal(err)
		}
	}
	deliver := func(i int, since string) string {
		r0, k0 := srv.SyncChecks()
		done := make(chan answer, 1)
		go func() { done <- sync(since, "60000") }()
		for r, k := srv.SyncChecks(); r == r0 && k == k0; r, k = srv.SyncChecks() {
			runtime.Gosched()
		}
		send(i)
		a := <-done
		if a.err != nil || a.n != 1 {
			b.Fatalf("long-poll %d: %d messages, %v", i, a.n, a.err)
		}
		return a.since
	}
	since := sync("", "0").since
	for i := range 10 { // warm the connections' statement caches
		since = deliver(-i-1, since)
	}
	r0, k0 := srv.SyncChecks()
	i := 0
	for b.Loop() {
		since = deliver(i, since)
		i++
	}
	r, k := srv.SyncChecks()
	b.ReportMetric(float64(r-r0)/float64(i), "checks/op")
	b.ReportMetric(float64(k-k0)/float64(i), "skips/op")
}
