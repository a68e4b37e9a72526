package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/testdb"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// counted marks the context of the request whose round trips are counted.
type counted struct{}

// roundTrips counts what a PostgreSQL pool sends on behalf of a counted
// request: queries (each a round trip of its own), prepares and pipelined
// batches (one round trip each, whatever they hold), and the statements of
// the batches.
type roundTrips struct {
	mu       sync.Mutex
	queries  []string
	batches  int
	prepares int
	batched  []string
}

func (c *roundTrips) count(ctx context.Context, f func()) {
	if ctx.Value(counted{}) == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

func (c *roundTrips) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queries, c.batches, c.prepares, c.batched = nil, 0, 0, nil
}

func (c *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.count(ctx, func() { c.queries = append(c.queries, d.SQL) })
	return ctx
}

func (c *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.count(ctx, func() { c.batches++ })
	return ctx
}

func (c *roundTrips) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.count(ctx, func() { c.batched = append(c.batched, d.SQL) })
}

func (c *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (c *roundTrips) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	c.count(ctx, func() { c.prepares++ })
	return ctx
}

func (c *roundTrips) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// batchHas reports whether a statement of the counted batches contains s.
func (c *roundTrips) batchHas(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, q := range c.batched {
		if strings.Contains(q, s) {
			return true
		}
	}
	return false
}

// tripRouter is the real router on PostgreSQL whose round trips for
// counted requests are counted: alice (A1) sends to bob (B1), who syncs.
type tripRouter struct {
	t     *testing.T
	h     http.Handler
	trips *roundTrips
	hub   *wakeup.Hub
	in    *inbox.Service
}

// newTripRouter builds it; listen starts the wake-up listener and waits
// until the hub hears every wake-up (quiet devices need it).
func newTripRouter(t *testing.T, listen bool) *tripRouter {
	ctx := context.Background()
	r := &tripRouter{t: t, trips: &roundTrips{}, hub: wakeup.NewHub()}
	b, err := storage.Open(ctx, storage.Options{URL: testdb.New(t), Migrate: true, Hub: r.hub, PostgresTracer: r.trips})
	require.NoError(t, err)
	lctx, stop := context.WithCancel(ctx)
	if listen {
		b.Start(lctx)
	}
	t.Cleanup(func() { r.hub.Close(); stop(); b.Close() })
	if listen {
		require.Eventually(t, func() bool { return !r.hub.Deaf() }, 30*time.Second, time.Millisecond, "listening")
	}
	r.in = inbox.New(inbox.Config{ServerName: "localhost", Store: b.Inbox()})
	dl := devicelists.New(b.Devices(), "localhost", nil, nil)
	r.h = httpapi.NewRouter(httpapi.Config{ServerName: "localhost", Inbox: r.in, Devices: dl,
		Sync: devicesync.New(devicesync.Config{Inbox: r.in, Devices: dl, Hub: r.hub})})
	for _, d := range [][3]string{{alice, "A1", "tok-alice"}, {bob, "B1", "tok-bob"}} {
		_, _, err := dl.PutDevice(ctx, d[0], d[1], d[2], nil, nil)
		require.NoError(t, err)
	}
	return r
}

func (r *tripRouter) send(txn string) {
	_, err := r.in.Send(context.Background(), inbox.TxnKey{UserID: alice, DeviceID: "A1", EventType: "m.test", TxnID: txn},
		inbox.Messages{bob: {"B1": json.RawMessage(`{"n":1}`)}})
	require.NoError(r.t, err)
}

// sync is bob's counted /sync.
func (r *tripRouter) sync(since, timeout string) servertest.SyncResponse {
	r.t.Helper()
	req := httptest.NewRequestWithContext(context.WithValue(context.Background(), counted{}, true), http.MethodGet,
		"/_matrix/client/v3/sync?timeout="+timeout+"&since="+since, nil)
	req.Header.Set("Authorization", "Bearer tok-bob")
	rec := httptest.NewRecorder()
	r.h.ServeHTTP(rec, req)
	require.Equal(r.t, http.StatusOK, rec.Code, "%s", rec.Body)
	var s servertest.SyncResponse
	require.NoError(r.t, json.Unmarshal(rec.Body.Bytes(), &s))
	return s
}

// A /sync check of a token this replica knows, acknowledging what the last
// sync handed out and fetching what came since, is one round trip to
// PostgreSQL: one pipeline holding the token's guard, the acknowledgement,
// the fetch, the device-list head and the key counts, and no other query.
func TestSyncCheckIsOneRoundTrip(t *testing.T) {
	r := newTripRouter(t, false)
	trips, send := r.trips, r.send
	sync := func(since string) servertest.SyncResponse {
		t.Helper()
		trips.reset()
		return r.sync(since, "0")
	}

	send("1")
	s := sync("")
	require.Len(t, s.ToDevice.Events, 1)
	require.Len(t, trips.queries, 1, "a token not seen before is looked up: %q", trips.queries)
	require.Equal(t, 1, trips.batches)

	for i := range 3 {
		send("warm" + string(rune('0'+i)))
		s = sync(s.NextBatch)
		require.Len(t, s.ToDevice.Events, 1)
		require.Empty(t, trips.queries, "check %d: no query besides the pipeline", i)
		require.Zero(t, trips.prepares)
		require.Equal(t, 1, trips.batches, "check %d: one pipeline", i)
		for _, part := range []string{"token_hash", "DELETE FROM device_inbox", "FROM device_inbox", "one_time_keys", "device_list_stream"} {
			require.True(t, trips.batchHas(part), "check %d: the pipeline holds %q", i, part)
		}
	}
}

// A long-poll right after an answer, on a replica that has heard nothing
// of the device since, waits without a round trip: a message delivered to
// a long-polling device costs one pipeline (the wake-up's check, which
// acknowledges the since), not two.
func TestQuietLongPollIsOneRoundTrip(t *testing.T) {
	r := newTripRouter(t, true)
	trips, hub, send, sync := r.trips, r.hub, r.send, r.sync

	send("0")
	s := sync("", "0")
	require.Len(t, s.ToDevice.Events, 1)
	for i := range 3 {
		trips.reset()
		got := make(chan servertest.SyncResponse, 1)
		go func() { got <- sync(s.NextBatch, "60000") }()
		require.Eventually(t, func() bool { return hub.Len() == 1 }, 30*time.Second, time.Millisecond, "the long-poll waits")
		send("poll" + string(rune('0'+i)))
		s = <-got
		require.Len(t, s.ToDevice.Events, 1)
		require.Empty(t, trips.queries, "long-poll %d: no query", i)
		require.Equal(t, 1, trips.batches, "long-poll %d: one pipeline, the wake-up's", i)
		require.True(t, trips.batchHas("DELETE FROM device_inbox"), "long-poll %d: it acknowledged", i)
	}
}
