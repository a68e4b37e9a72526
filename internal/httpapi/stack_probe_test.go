package httpapi_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// BenchmarkWaitingSyncMemory measures what one idle long-poll costs in
// goroutine stack, the part of its memory todeviced's own code decides
// (net/http adds its connection buffers on top). It parks b.N requests in
// /sync on the real router, collects garbage until stacks have shrunk, and
// reports stack KiB per waiting request.
func BenchmarkWaitingSyncMemory(b *testing.B) {
	cfg := servertest.Config("sqlite:" + filepath.Join(b.TempDir(), "p.db"))
	srv, err := server.New(context.Background(), cfg, nil, server.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	h := srv.Handler()
	n := max(b.N, 100)
	for i := range n {
		if _, _, err := srv.Devices().PutDevice(context.Background(), "@u:localhost", fmt.Sprint("D", i), fmt.Sprint("tok", i), nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.StackInuse
	b.ResetTimer()
	for i := range n {
		go func() {
			req := httptest.NewRequest("GET", "/_matrix/client/v3/sync?timeout=600000", nil)
			req.Header.Set("Authorization", fmt.Sprint("Bearer tok", i))
			h.ServeHTTP(httptest.NewRecorder(), req)
		}()
	}
	for srv.Hub().Len() < n {
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	for range 5 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.StackInuse-before)/float64(n)/1024, "stack-KiB/waiter")
	srv.Hub().Close() // answer them all before the database closes
	for srv.Hub().Len() > 0 {
		time.Sleep(5 * time.Millisecond)
	}
}
