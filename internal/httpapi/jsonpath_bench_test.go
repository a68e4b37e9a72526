package httpapi_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

// The client benchmarks below drive the real router in-process (handler
// called directly, no sockets, so what they count is todeviced's work and
// not the HTTP client's), with the load generator's default small fan-out:
// a sendToDevice of an Olm-sized payload (≈ 0.5 KiB) to four devices of two
// users, and those devices' /syncs. The store is real, so its time and
// allocations are in the figures too; on SQLite the file lives in
// /dev/shm when there is one, so a commit's fsync costs next to nothing
// and the figures are CPU.
//
//	go test -run XXX -bench 'Client' -benchmem ./internal/httpapi/
//
// They also report the process's CPU time per operation (cpu-ns/op).

// benchBackends are the stores the client benchmarks run on.
var benchBackends = []struct {
	name string
	url  func(b *testing.B) string
}{
	{"sqlite", func(b *testing.B) string { return "sqlite:" + filepath.Join(shmDir(b), "todeviced.db") }},
	{"postgres", func(b *testing.B) string { return testdb.New(b) }},
}

// shmDir is a temporary directory in memory when the machine has one.
func shmDir(b *testing.B) string {
	if dir, err := os.MkdirTemp("/dev/shm", "todeviced-bench-"); err == nil {
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// fanOutBench is one sender and the four devices it sends to.
type fanOutBench struct {
	h       http.Handler
	w       *benchWriter
	devices [4]struct{ user, device, token, since string }
	// content is each device's message, Olm-shaped and distinct.
	content [4]string
}

func newFanOutBench(b *testing.B, url string) *fanOutBench {
	in := servertest.Start(b, servertest.Config(url), server.Options{})
	in.PutDevice(b, alice, "A1", "tok-alice")
	f := &fanOutBench{h: in.Handler(), w: newBenchWriter()}
	for i := range f.devices {
		d := &f.devices[i]
		d.user = fmt.Sprintf("@user%d:localhost", i/2)
		d.device = fmt.Sprintf("D%d", i)
		d.token = "tok-" + d.user + d.device
		in.PutDevice(b, d.user, d.device, d.token)
		f.content[i] = olmContent(i)
	}
	for i := range f.devices {
		f.devices[i].since = f.sync(b, i, false)
	}
	return f
}

// olmContent is an m.room.encrypted content of an Olm pre-key message as a
// client sends it: the sender's curve25519 key and a ciphertext for the
// recipient's key, ≈ 0.5 KiB.
func olmContent(i int) string {
	key := func(c byte) string { return strings.Repeat(string(c), 43) }
	body := strings.Repeat(string(rune('a'+i)), 300) + "+/" + strings.Repeat("Z", 98)
	return `{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"` + key('S') +
		`","ciphertext":{"` + key(byte('0'+i)) + `":{"type":0,"body":"` + body + `"}}}`
}

// body is the sendToDevice body of one send to the four devices.
func (f *fanOutBench) body() []byte {
	var b bytes.Buffer
	b.WriteString(`{"messages":{`)
	for i, d := range f.devices {
		if i%2 == 0 {
			if i > 0 {
				b.WriteString("},")
			}
			fmt.Fprintf(&b, "%q:{", d.user)
		} else {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", d.device, f.content[i])
	}
	b.WriteString(`}}}`)
	return b.Bytes()
}

func (f *fanOutBench) send(b *testing.B, txn int, body []byte) {
	r, err := http.NewRequestWithContext(context.Background(), http.MethodPut,
		"/_matrix/client/v3/sendToDevice/m.room.encrypted/txn"+strconv.Itoa(txn), bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer tok-alice")
	f.w.reset()
	f.h.ServeHTTP(f.w, r)
	if f.w.status != http.StatusOK {
		b.Fatalf("sendToDevice: %d %s", f.w.status, f.w.body.Bytes())
	}
}

// sync syncs device i from its since, requiring one event when want is
// set, and returns the next since.
func (f *fanOutBench) sync(b *testing.B, i int, want bool) string {
	d := &f.devices[i]
	target := "/_matrix/client/v3/sync?timeout=0"
	if d.since != "" {
		target += "&since=" + d.since
	}
	r, err := http.NewRequestWithContext(context.Background(), http.MethodGet, target, nil)
	if err != nil {
		b.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+d.token)
	f.w.reset()
	f.h.ServeHTTP(f.w, r)
	out := f.w.body.Bytes()
	if f.w.status != http.StatusOK {
		b.Fatalf("sync: %d %s", f.w.status, out)
	}
	if want && !bytes.Contains(out, []byte(`"to_device":{"events":[{"sender":"@alice:localhost","type":"m.room.encrypted","content":{"algorithm"`)) {
		b.Fatalf("sync delivered no event: %s", out)
	}
	const key = `"next_batch":"`
	at := bytes.Index(out, []byte(key))
	if at < 0 {
		b.Fatalf("sync: no next_batch in %s", out)
	}
	tok := out[at+len(key):]
	return string(tok[:bytes.IndexByte(tok, '"')])
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs op b.N times and reports, next to the wall time, the CPU time
// the process spent per op ("cpu-ns/op"): todeviced's own CPU, which on a
// shared machine moves less than the wall time, and without PostgreSQL's,
// which runs in another process.
func loop(b *testing.B, op func(n int)) {
	b.ReportAllocs()
	start := cpuTime(b)
	n := 0
	for b.Loop() {
		op(n)
		n++
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(n), "cpu-ns/op")
}

// BenchmarkClientSendToDevice is one sendToDevice of four Olm-sized
// messages through the router: authentication, body validation, the
// accept and its commit, the response. The inboxes are never drained.
func BenchmarkClientSendToDevice(b *testing.B) {
	for _, be := range benchBackends {
		b.Run(be.name, func(b *testing.B) {
			f := newFanOutBench(b, be.url(b))
			body := f.body()
			loop(b, func(n int) { f.send(b, n, body) })
		})
	}
}

// BenchmarkClientFanOut4 is what the small fan-out load asks of the server
// per send: the send, then each of its four devices' /sync, which
// acknowledges that device's previous message and hands out the new one.
// Five requests an operation.
func BenchmarkClientFanOut4(b *testing.B) {
	for _, be := range benchBackends {
		b.Run(be.name, func(b *testing.B) {
			f := newFanOutBench(b, be.url(b))
			body := f.body()
			loop(b, func(n int) {
				f.send(b, n, body)
				for i := range f.devices {
					f.devices[i].since = f.sync(b, i, true)
				}
			})
		})
	}
}

// benchWriter is a reusable http.ResponseWriter that keeps the body, so
// the benchmarks' own allocations stay out of the figures.
type benchWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func newBenchWriter() *benchWriter { return &benchWriter{h: http.Header{}} }

func (w *benchWriter) Header() http.Header { return w.h }

func (w *benchWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *benchWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

func (w *benchWriter) reset() {
	clear(w.h)
	w.status = 0
	w.body.Reset()
}
