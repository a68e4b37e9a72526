package loadgen

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeServer is a minimal in-memory todeviced with bugs to order: it checks
// that a whole run, not just Verify, notices a faulty server.
type fakeServer struct {
	bug string // "", "duplicate", "lose" or "reorder"

	mu      sync.Mutex
	byToken map[string]*fakeDevice
	devices map[string]*fakeDevice // user + "|" + device
	txns    map[string]bool
	pos     int64
	sent    int
	bugged  bool
}

type fakeDevice struct {
	userID string
	queue  []fakeMessage
}

type fakeMessage struct {
	pos   int64
	event syncEvent
}

func newFakeServer(bug string) *fakeServer {
	return &fakeServer{bug: bug, byToken: map[string]*fakeDevice{}, devices: map[string]*fakeDevice{}, txns: map[string]bool{}}
}

func (f *fakeServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_todeviced/internal/v1/users/{user}/devices/{device}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			AccessToken string `json:"access_token"`
		}
		if json.NewDecoder(r.Body).Decode(&body) != nil {
			http.Error(w, `{"errcode":"M_BAD_JSON"}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		d := &fakeDevice{userID: r.PathValue("user")}
		f.devices[r.PathValue("user")+"|"+r.PathValue("device")] = d
		f.byToken["Bearer "+body.AccessToken] = d
		f.mu.Unlock()
		_, _ = io.WriteString(w, "{}")
	})
	mux.HandleFunc("DELETE /_todeviced/internal/v1/users/{user}/devices/{device}", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "{}")
	})
	mux.HandleFunc("PUT /_matrix/client/v3/sendToDevice/{type}/{txn}", f.send)
	mux.HandleFunc("GET /_matrix/client/v3/sync", f.sync)
	return mux
}

func (f *fakeServer) send(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if json.NewDecoder(r.Body).Decode(&body) != nil {
		http.Error(w, `{"errcode":"M_BAD_JSON"}`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	from := f.byToken[r.Header.Get("Authorization")]
	key := from.userID + "|" + r.PathValue("txn")
	if !f.txns[key] {
		f.txns[key] = true
		for user, devs := range body.Messages {
			for dev, content := range devs {
				f.sent++
				if f.bug == "lose" && f.sent%50 == 0 {
					continue
				}
				f.pos++
				d := f.devices[user+"|"+dev]
				d.queue = append(d.queue, fakeMessage{pos: f.pos, event: syncEvent{Sender: from.userID, Type: r.PathValue("type"), Content: content}})
			}
		}
	}
	_, _ = io.WriteString(w, "{}")
}

// sync acknowledges up to since and returns what is above it; the
// long-poll is a short poll loop, which is all a test needs.
func (f *fakeServer) sync(w http.ResponseWriter, r *http.Request) {
	since, _ := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
	timeoutMS, _ := strconv.ParseInt(r.URL.Query().Get("timeout"), 10, 64)
	deadline := time.Now().Add(time.Duration(min(timeoutMS, 200)) * time.Millisecond)
	for {
		f.mu.Lock()
		d := f.byToken[r.Header.Get("Authorization")]
		kept := d.queue[:0]
		var acked []fakeMessage
		for _, m := range d.queue {
			if m.pos > since {
				kept = append(kept, m)
			} else {
				acked = append(acked, m)
			}
		}
		d.queue = kept
		if f.bug == "duplicate" && !f.bugged && len(acked) > 0 {
			// Hand an acknowledged message out again.
			f.bugged = true
			f.pos++
			d.queue = append(d.queue, fakeMessage{pos: f.pos, event: acked[0].event})
		}
		var resp struct {
			NextBatch string `json:"next_batch"`
			ToDevice  struct {
				Events []syncEvent `json:"events"`
			} `json:"to_device"`
		}
		resp.NextBatch = strconv.FormatInt(since, 10)
		resp.ToDevice.Events = []syncEvent{}
		for _, m := range d.queue[:min(len(d.queue), 100)] {
			resp.ToDevice.Events = append(resp.ToDevice.Events, m.event)
			resp.NextBatch = strconv.FormatInt(m.pos, 10)
		}
		if ev := resp.ToDevice.Events; f.bug == "reorder" && !f.bugged && len(ev) >= 2 {
			f.bugged = true
			ev[0], ev[1] = ev[1], ev[0]
		}
		// In reorder mode, wait for two events so there is a pair to swap.
		enough := len(resp.ToDevice.Events) > 0 && (f.bug != "reorder" || f.bugged || len(resp.ToDevice.Events) >= 2)
		f.mu.Unlock()
		if enough || !time.Now().Before(deadline) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(resp)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func fakeRun(t *testing.T, bug string) *Report {
	t.Helper()
	srv := httptest.NewServer(newFakeServer(bug).handler())
	t.Cleanup(srv.Close)
	cfg := Defaults()
	cfg.URL = srv.URL
	cfg.InternalSecret = "s"
	cfg.Users, cfg.DevicesPerUser = 3, 2
	// One sender, so every message in an inbox is of the same (sender,
	// device) pair and any swap is a reordering.
	cfg.Senders, cfg.Fanout = 1, 3
	cfg.Duration = 0
	cfg.Messages = 100
	cfg.SyncTimeout = time.Second
	cfg.DrainTimeout = time.Second
	r, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := r.Run(ctx)
	require.NoError(t, err)
	return rep
}

func TestRunAgainstFakeServer(t *testing.T) {
	rep := fakeRun(t, "")
	assert.True(t, rep.OK(), "%+v", rep.Verdict)
	assert.Equal(t, int64(300), rep.Verdict.Delivered)
}

func TestRunCatchesDuplicate(t *testing.T) {
	rep := fakeRun(t, "duplicate")
	assert.False(t, rep.OK())
	assert.Equal(t, int64(1), rep.Verdict.Duplicates, "%+v", rep.Verdict)
	assert.Zero(t, rep.Verdict.Lost)
}

func TestRunCatchesLoss(t *testing.T) {
	rep := fakeRun(t, "lose")
	assert.False(t, rep.OK())
	assert.False(t, rep.Drained)
	assert.Equal(t, int64(6), rep.Verdict.Lost, "%+v", rep.Verdict) // every 50th of 300
	assert.Zero(t, rep.Verdict.Duplicates)
}

func TestRunCatchesReordering(t *testing.T) {
	rep := fakeRun(t, "reorder")
	assert.False(t, rep.OK())
	assert.Equal(t, int64(1), rep.Verdict.Reordered, "%+v", rep.Verdict)
	assert.Zero(t, rep.Verdict.Lost+rep.Verdict.Duplicates)
}
