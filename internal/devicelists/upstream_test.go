package devicelists_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/storage"
)

// fakeHomeserver answers whoami from a token table it can change.
type fakeHomeserver struct {
	mu     sync.Mutex
	tokens map[string][2]string // token -> user, device
	status int                  // when set, every answer has this status
	calls  atomic.Int32
}

func (f *fakeHomeserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	if r.URL.Path != "/_matrix/client/v3/account/whoami" {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status != 0 {
		w.WriteHeader(f.status)
		return
	}
	who, ok := f.tokens[r.Header.Get("Authorization")[len("Bearer "):]]
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN_TOKEN","error":"no"}`))
		return
	}
	if who[1] == "" {
		_, _ = w.Write([]byte(`{"user_id":"` + who[0] + `"}`))
		return
	}
	_, _ = w.Write([]byte(`{"user_id":"` + who[0] + `","device_id":"` + who[1] + `"}`))
}

func TestUpstreamAuthentication(t *testing.T) {
	ctx := context.Background()
	b, err := storage.Open(ctx, storage.Options{URL: "sqlite:" + filepath.Join(t.TempDir(), "t.db"), Migrate: true})
	require.NoError(t, err)
	defer b.Close()
	hs := &fakeHomeserver{tokens: map[string][2]string{
		"hs-alice":  {"@alice:example.org", "PHONE"},
		"hs-remote": {"@mallory:elsewhere.org", "X"},
		"hs-nodev":  {"@bot:example.org", ""},
	}}
	srv := httptest.NewServer(hs)
	defer srv.Close()
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }

	svc := devicelists.New(b.Devices(), "example.org", nil, nil)
	svc.SetUpstream(devicelists.NewUpstream(srv.URL+"/", nil, clock))

	_, _, err = svc.PutDevice(ctx, "@bob:example.org", "B1", "local-bob", nil, nil)
	require.NoError(t, err)
	d, err := svc.Authenticate(ctx, "local-bob")
	require.NoError(t, err)
	require.Equal(t, "B1", d.DeviceID)
	require.Zero(t, hs.calls.Load(), "tokens todeviced holds never go to the homeserver")
	require.Equal(t, devicelists.HashToken("local-bob"), d.Guard, "a token of ours can be guarded")
	cached, ok := svc.CachedAuth("local-bob")
	require.True(t, ok, "and is remembered for /sync")
	require.True(t, cached.Unverified)
	require.Equal(t, d.Device, cached.Device)

	d, err = svc.Authenticate(ctx, "hs-alice")
	require.NoError(t, err)
	require.Equal(t, "@alice:example.org", d.UserID)
	require.Equal(t, "PHONE", d.DeviceID)
	got, err := svc.Device(ctx, "@alice:example.org", "PHONE")
	require.NoError(t, err, "the device is created on first sight")
	require.Equal(t, d.NID, got.NID)
	// No row of ours holds the homeserver's token: no sync could guard
	// it, so it is never taken from memory (the whoami cache bounds how
	// long it outlives a logout instead).
	require.Nil(t, d.Guard)
	_, ok = svc.CachedAuth("hs-alice")
	require.False(t, ok, "a token the homeserver vouched for is not remembered")
	for range 5 {
		_, err = svc.Authenticate(ctx, "hs-alice")
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, hs.calls.Load(), "answers are cached")

	// The user logs out at the homeserver: within the cache lifetime the
	// token stops working.
	hs.mu.Lock()
	delete(hs.tokens, "hs-alice")
	hs.mu.Unlock()
	now.Add(int64(devicelists.UpstreamCacheTTL + time.Millisecond))
	_, err = svc.Authenticate(ctx, "hs-alice")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	_, err = svc.Authenticate(ctx, "hs-alice")
	require.ErrorIs(t, err, devicelists.ErrNotFound)
	require.EqualValues(t, 2, hs.calls.Load(), "refusals are cached too")

	_, err = svc.Authenticate(ctx, "hs-remote")
	require.ErrorIs(t, err, devicelists.ErrNotFound, "a user of another server cannot sign in here")
	_, err = svc.Authenticate(ctx, "hs-nodev")
	require.ErrorIs(t, err, devicelists.ErrNotFound, "a token without a device has no inbox")

	hs.mu.Lock()
	hs.status = http.StatusBadGateway
	hs.mu.Unlock()
	_, err = svc.Authenticate(ctx, "hs-new")
	e, ok := matrix.AsError(err)
	require.True(t, ok, "an unreachable homeserver is a Matrix error, not a 500: %v", err)
	require.Equal(t, http.StatusServiceUnavailable, e.Status)
}
