package httpapi

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/inbox"
)

// discardWriter is an http.ResponseWriter that keeps nothing but its
// header map, which is cleared and reused, as the benchmarks count the
// encoding's allocations and not the writer's.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *discardWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// benchSyncBody is a /sync answer of the small fan-out load: one
// Olm-encrypted event of ≈ 0.5 KiB, the one-time-key counts, no
// device-list section.
func benchSyncBody(events int) syncBody {
	content := `{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"` + strings.Repeat("S", 43) +
		`","ciphertext":{"` + strings.Repeat("0", 43) + `":{"type":0,"body":"` + strings.Repeat("a", 300) + "+/" + strings.Repeat("Z", 98) + `"}}}`
	evs := make([]inbox.Event, events)
	for i := range evs {
		evs[i] = inbox.Event{Sender: "@alice:localhost", Type: "m.room.encrypted", Content: []byte(content)}
	}
	fallback := []string{}
	return syncBody{
		NextBatch:          "Ab3dE_12_1040_1041_77",
		ToDevice:           toDeviceBody{Events: evs},
		AccountData:        emptyEvents{Events: []struct{}{}},
		Presence:           emptyEvents{Events: []struct{}{}},
		OneTimeKeysCount:   map[string]int{"signed_curve25519": 50},
		UnusedFallbackKeys: &fallback,
	}
}

// BenchmarkWriteSyncBody is the encoding and writing of a /sync answer.
//
//	go test -run XXX -bench 'WriteSyncBody|Observe' -benchmem ./internal/httpapi/
func BenchmarkWriteSyncBody(b *testing.B) {
	for _, n := range []int{0, 1, 4} {
		b.Run("events="+string(rune('0'+n)), func(b *testing.B) {
			body := benchSyncBody(n)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.status = 0
				writeJSON(w, http.StatusOK, body)
			}
		})
	}
}

// BenchmarkObserve is the request middleware around a handler that only
// answers 200, on a chi route as in the router.
func BenchmarkObserve(b *testing.B) {
	r := chi.NewRouter()
	r.Use(observe(slog.New(slog.DiscardHandler), NewMetrics(nil)))
	r.Get("/_matrix/client/v3/sync", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	req := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync", nil)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		w.status = 0
		r.ServeHTTP(w, req)
	}
}
