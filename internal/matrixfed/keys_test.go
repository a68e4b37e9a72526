package matrixfed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

func TestServerKeyResponse(t *testing.T) {
	key := testKey(t, "ed25519:cur", 1)
	old := testKey(t, "ed25519:old", 2)
	now := time.UnixMilli(1_700_000_000_000)
	raw, err := ServerKeyResponse("hs.example", key, []OldVerifyKey{{
		KeyID: old.ServerKeyID, Public: old.Public(), ExpiredAt: time.UnixMilli(1_600_000_000_000),
	}}, 24*time.Hour, now)
	require.NoError(t, err)

	require.NoError(t, VerifyJSON("hs.example", "ed25519:cur", key.Public(), raw))
	var sigs struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	require.NoError(t, json.Unmarshal(raw, &sigs))
	sig := sigs.Signatures["hs.example"]["ed25519:cur"]
	want := `{"old_verify_keys":{"ed25519:old":{"expired_ts":1600000000000,"key":"` + EncodeBase64(old.Public()) + `"}},` +
		`"server_name":"hs.example",` +
		`"signatures":{"hs.example":{"ed25519:cur":"` + sig + `"}},` +
		`"valid_until_ts":1700086400000,` +
		`"verify_keys":{"ed25519:cur":{"key":"` + EncodeBase64(key.Public()) + `"}}}`
	require.Equal(t, want, string(raw))

	// What we publish, our own fetcher accepts.
	parsed, err := parseServerKeys(raw, "hs.example", now, DefaultMaxKeyValidity)
	require.NoError(t, err)
	require.Equal(t, key.Public(), parsed.verify["ed25519:cur"].pub)
	require.Equal(t, time.UnixMilli(1_700_086_400_000), parsed.verify["ed25519:cur"].validUntil)
	require.Equal(t, old.Public(), parsed.old["ed25519:old"].pub)
	require.Equal(t, time.UnixMilli(1_600_000_000_000), parsed.old["ed25519:old"].expiredAt)
}

func TestServerKeyResponseNoOldKeys(t *testing.T) {
	key := testKey(t, "ed25519:cur", 1)
	raw, err := ServerKeyResponse("hs.example", key, nil, 2*time.Hour, time.UnixMilli(0))
	require.NoError(t, err)
	require.Contains(t, string(raw), `"old_verify_keys":{}`)
	require.Contains(t, string(raw), `"valid_until_ts":7200000`)
}

func TestServerKeyResponseRejects(t *testing.T) {
	key := testKey(t, "ed25519:cur", 1)
	now := time.UnixMilli(0)
	_, err := ServerKeyResponse("hs", key, nil, 30*time.Minute, now)
	require.ErrorContains(t, err, "shorter than an hour")
	_, err = ServerKeyResponse("hs", SigningKey{ServerKeyID: "rsa:x", Private: key.Private}, nil, time.Hour, now)
	require.Error(t, err)
	_, err = ServerKeyResponse("hs", key, []OldVerifyKey{{KeyID: "ed25519:cur", Public: key.Public()}}, time.Hour, now)
	require.ErrorContains(t, err, "both current and old")
	_, err = ServerKeyResponse("hs", key, []OldVerifyKey{{KeyID: "ed25519:o", Public: key.Public()[:3]}}, time.Hour, now)
	require.ErrorContains(t, err, "not an ed25519 public key")
}

// keyDoc builds a key response signed by the given keys (all listed as
// verify_keys unless listed is given).
type keyDoc struct {
	server     string
	verify     []SigningKey
	old        []OldVerifyKey
	validUntil time.Time
	signers    []SigningKey // defaults to verify
}

func (d keyDoc) build(t *testing.T) []byte {
	t.Helper()
	doc := serverKeysJSON{
		ServerName:    d.server,
		VerifyKeys:    map[string]verifyKeyJSON{},
		OldVerifyKeys: map[string]verifyKeyJSON{},
	}
	vu := d.validUntil.UnixMilli()
	doc.ValidUntilTS = &vu
	for _, k := range d.verify {
		doc.VerifyKeys[k.ServerKeyID] = verifyKeyJSON{Key: EncodeBase64(k.Public())}
	}
	for _, k := range d.old {
		exp := k.ExpiredAt.UnixMilli()
		doc.OldVerifyKeys[k.KeyID] = verifyKeyJSON{Key: EncodeBase64(k.Public), ExpiredTS: &exp}
	}
	raw, err := json.Marshal(doc)
	require.NoError(t, err)
	signers := d.signers
	if signers == nil {
		signers = d.verify
	}
	for _, k := range signers {
		raw, err = SignJSON(d.server, k.ServerKeyID, k.Private, raw)
		require.NoError(t, err)
	}
	return raw
}

func TestParseServerKeys(t *testing.T) {
	now := time.UnixMilli(1_000_000_000_000)
	k1 := testKey(t, "ed25519:k1", 1)
	k2 := testKey(t, "ed25519:k2", 2)

	t.Run("two keys both signing", func(t *testing.T) {
		raw := keyDoc{server: "s", verify: []SigningKey{k1, k2}, validUntil: now.Add(time.Hour)}.build(t)
		p, err := parseServerKeys(raw, "s", now, DefaultMaxKeyValidity)
		require.NoError(t, err)
		require.Len(t, p.verify, 2)
	})
	t.Run("two keys one signing", func(t *testing.T) {
		raw := keyDoc{server: "s", verify: []SigningKey{k1, k2}, signers: []SigningKey{k2}, validUntil: now.Add(time.Hour)}.build(t)
		_, err := parseServerKeys(raw, "s", now, DefaultMaxKeyValidity)
		require.NoError(t, err)
	})
	t.Run("validity capped at seven days", func(t *testing.T) {
		raw := keyDoc{server: "s", verify: []SigningKey{k1}, validUntil: now.Add(30 * 24 * time.Hour)}.build(t)
		p, err := parseServerKeys(raw, "s", now, DefaultMaxKeyValidity)
		require.NoError(t, err)
		require.Equal(t, now.Add(7*24*time.Hour), p.verify["ed25519:k1"].validUntil)
	})
	t.Run("unknown algorithms ignored", func(t *testing.T) {
		raw := []byte(`{"server_name":"s","valid_until_ts":1,"verify_keys":{"curve9:x":{"key":"zz"},"ed25519:k1":{"key":"` +
			EncodeBase64(k1.Public()) + `"}},"signatures":{"s":{"curve9:x":"zz"}}}`)
		raw, err := SignJSON("s", k1.ServerKeyID, k1.Private, raw)
		require.NoError(t, err)
		p, err := parseServerKeys(raw, "s", now, DefaultMaxKeyValidity)
		require.NoError(t, err)
		require.Len(t, p.verify, 1)
	})

	bad := map[string]struct {
		raw     func() []byte
		wantMsg string
	}{
		"wrong server name": {func() []byte {
			return keyDoc{server: "evil", verify: []SigningKey{k1}, validUntil: now}.build(t)
		}, `for server "evil", not "s"`},
		"unsigned": {func() []byte {
			return keyDoc{server: "s", verify: []SigningKey{k1}, signers: []SigningKey{}, validUntil: now}.build(t)
		}, "not signed by s"},
		"signed by unlisted key": {func() []byte {
			return keyDoc{server: "s", verify: []SigningKey{k1}, signers: []SigningKey{k1, k2}, validUntil: now}.build(t)
		}, "does not list in verify_keys"},
		"signed by other server only": {func() []byte {
			raw := keyDoc{server: "s", verify: []SigningKey{k1}, signers: []SigningKey{}, validUntil: now}.build(t)
			raw, err := SignJSON("other", k1.ServerKeyID, k1.Private, raw)
			require.NoError(t, err)
			return raw
		}, "not signed by s"},
		"tampered": {func() []byte {
			raw := keyDoc{server: "s", verify: []SigningKey{k1}, validUntil: now}.build(t)
			var m map[string]any
			require.NoError(t, json.Unmarshal(raw, &m))
			m["valid_until_ts"] = now.Add(time.Hour).UnixMilli()
			raw, err := json.Marshal(m)
			require.NoError(t, err)
			return raw
		}, "signature invalid"},
		"no valid_until_ts": {func() []byte {
			raw, err := SignJSON("s", k1.ServerKeyID, k1.Private, []byte(`{"server_name":"s","verify_keys":{"ed25519:k1":{"key":"`+EncodeBase64(k1.Public())+`"}}}`))
			require.NoError(t, err)
			return raw
		}, "no valid_until_ts"},
		"short key": {func() []byte {
			return []byte(`{"server_name":"s","valid_until_ts":1,"verify_keys":{"ed25519:k1":{"key":"AAAA"}}}`)
		}, "has 3 bytes"},
		"old key without expiry": {func() []byte {
			return []byte(`{"server_name":"s","valid_until_ts":1,"verify_keys":{},"old_verify_keys":{"ed25519:o":{"key":"` + EncodeBase64(k1.Public()) + `"}}}`)
		}, "no expired_ts"},
		"not JSON": {func() []byte { return []byte(`<html>`) }, "decoding key response"},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := parseServerKeys(tc.raw(), "s", now, DefaultMaxKeyValidity)
			require.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

// fakeRequester serves key responses per server and counts requests.
type fakeRequester struct {
	mu      sync.Mutex
	calls   map[string]int
	respond func(ctx context.Context, server string) ([]byte, error)
}

func (f *fakeRequester) Do(ctx context.Context, destination, method, path string, query url.Values, body, out any) error {
	if method != http.MethodGet || path != KeyServerPath || body != nil {
		return fmt.Errorf("unexpected request %s %s", method, path)
	}
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[string]int)
	}
	f.calls[destination]++
	f.mu.Unlock()
	raw, err := f.respond(ctx, destination)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

func (f *fakeRequester) count(server string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[server]
}

func TestKeyFetcherCachesUntilValidUntil(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	var doc atomic.Pointer[[]byte]
	setDoc := func(d keyDoc) { raw := d.build(t); doc.Store(&raw) }
	setDoc(keyDoc{server: "remote.example", verify: []SigningKey{k1}, validUntil: clock.Now().Add(time.Hour)})
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return *doc.Load(), nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})
	ctx := context.Background()

	pub, err := f.PublicKey(ctx, "remote.example", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	require.Equal(t, k1.Public(), pub)
	require.Equal(t, 1, req.count("remote.example"))

	clock.Advance(59 * time.Minute)
	_, err = f.PublicKey(ctx, "remote.example", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	require.Equal(t, 1, req.count("remote.example"), "served from cache")

	// An explicit past time within validity is served from cache too.
	_, err = f.PublicKey(ctx, "remote.example", "ed25519:k1", clock.Now().Add(-24*time.Hour))
	require.NoError(t, err)
	require.Equal(t, 1, req.count("remote.example"))

	// Past valid_until_ts the key must be refetched; the server extends it.
	clock.Advance(2 * time.Minute)
	setDoc(keyDoc{server: "remote.example", verify: []SigningKey{k1}, validUntil: clock.Now().Add(time.Hour)})
	pub, err = f.PublicKey(ctx, "remote.example", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	require.Equal(t, k1.Public(), pub)
	require.Equal(t, 2, req.count("remote.example"))
}

func TestKeyFetcherRefusesKeyPastValidUntil(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	raw := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: clock.Now().Add(-time.Second)}.build(t)
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return raw, nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})

	_, err := f.PublicKey(context.Background(), "r", "ed25519:k1", time.Time{})
	require.ErrorIs(t, err, ErrKeyExpired)
	require.Equal(t, 1, req.count("r"))
	// ...but it was valid for a time before valid_until_ts.
	pub, err := f.PublicKey(context.Background(), "r", "ed25519:k1", clock.Now().Add(-time.Minute))
	require.NoError(t, err)
	require.Equal(t, k1.Public(), pub)
}

func TestKeyFetcherSevenDayCap(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	raw := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: clock.Now().Add(365 * 24 * time.Hour)}.build(t)
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return raw, nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})
	ctx := context.Background()

	_, err := f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	clock.Advance(7 * 24 * time.Hour)
	_, err = f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	require.Equal(t, 1, req.count("r"), "exactly seven days is still within the cap")
	clock.Advance(time.Millisecond)
	_, err = f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	require.Equal(t, 2, req.count("r"), "refetched after seven days")
}

func TestKeyFetcherOldKeys(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	old := testKey(t, "ed25519:old", 2)
	expired := clock.Now().Add(-time.Hour)
	raw := keyDoc{
		server: "r", verify: []SigningKey{k1}, validUntil: clock.Now().Add(time.Hour),
		old: []OldVerifyKey{{KeyID: old.ServerKeyID, Public: old.Public(), ExpiredAt: expired}},
	}.build(t)
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return raw, nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})
	ctx := context.Background()

	pub, err := f.PublicKey(ctx, "r", "ed25519:old", expired.Add(-time.Millisecond))
	require.NoError(t, err)
	require.Equal(t, old.Public(), pub)

	_, err = f.PublicKey(ctx, "r", "ed25519:old", expired)
	require.ErrorIs(t, err, ErrKeyExpired)
	// "Now" (request authentication) is after expiry too.
	_, err = f.PublicKey(ctx, "r", "ed25519:old", time.Time{})
	require.ErrorIs(t, err, ErrKeyExpired)
	clock.Advance(time.Hour)
	_, err = f.PublicKey(ctx, "r", "ed25519:old", time.Time{})
	require.ErrorIs(t, err, ErrKeyExpired)
	require.Equal(t, 1, req.count("r"), "an expired old key is not refetched")
}

func TestKeyFetcherUnknownKeyIsRateLimited(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	raw := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: clock.Now().Add(24 * time.Hour)}.build(t)
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return raw, nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})
	ctx := context.Background()

	_, err := f.PublicKey(ctx, "r", "ed25519:nope", time.Time{})
	require.ErrorIs(t, err, ErrKeyNotFound)
	require.Equal(t, 1, req.count("r"))
	for i := range 10 {
		_, err = f.PublicKey(ctx, "r", fmt.Sprintf("ed25519:nope%d", i), time.Time{})
		require.ErrorIs(t, err, ErrKeyNotFound)
	}
	require.Equal(t, 1, req.count("r"), "no refetch within the interval")

	clock.Advance(DefaultKeyRefetchInterval)
	_, err = f.PublicKey(ctx, "r", "ed25519:nope", time.Time{})
	require.ErrorIs(t, err, ErrKeyNotFound)
	require.Equal(t, 2, req.count("r"))
}

func TestKeyFetcherNegativeCache(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	var fail atomic.Bool
	fail.Store(true)
	raw := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: clock.Now().Add(24 * time.Hour)}.build(t)
	boom := errors.New("connection refused")
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) {
		if fail.Load() {
			return nil, boom
		}
		return raw, nil
	}}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now, RefetchInterval: 90 * time.Second})
	ctx := context.Background()

	_, err := f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.ErrorIs(t, err, boom)
	require.Contains(t, err.Error(), "fetching server keys from r")
	fail.Store(false)
	clock.Advance(89 * time.Second)
	for range 5 {
		_, err = f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
		require.ErrorIs(t, err, boom, "the failure is remembered")
	}
	require.Equal(t, 1, req.count("r"))

	clock.Advance(time.Second)
	pub, err := f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.NoError(t, err)
	require.Equal(t, k1.Public(), pub)
	require.Equal(t, 2, req.count("r"))
}

func TestKeyFetcherBadResponseIsAFailure(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	// A response for another server must not be cached for this one.
	raw := keyDoc{server: "impostor", verify: []SigningKey{k1}, validUntil: clock.Now().Add(time.Hour)}.build(t)
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return raw, nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})
	_, err := f.PublicKey(context.Background(), "r", "ed25519:k1", time.Time{})
	require.ErrorContains(t, err, `for server "impostor", not "r"`)
	require.NotErrorIs(t, err, ErrKeyNotFound)
}

func TestKeyFetcherKeyRotation(t *testing.T) {
	clock := newFakeClock()
	k1 := testKey(t, "ed25519:k1", 1)
	k2 := testKey(t, "ed25519:k2", 2)
	var doc atomic.Pointer[[]byte]
	first := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: clock.Now().Add(time.Hour)}.build(t)
	doc.Store(&first)
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return *doc.Load(), nil }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now})
	ctx := context.Background()
	_, err := f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.NoError(t, err)

	clock.Advance(2 * time.Hour)
	second := keyDoc{server: "r", verify: []SigningKey{k2}, validUntil: clock.Now().Add(time.Hour),
		old: []OldVerifyKey{{KeyID: k1.ServerKeyID, Public: k1.Public(), ExpiredAt: clock.Now().Add(-time.Minute)}}}.build(t)
	doc.Store(&second)
	pub, err := f.PublicKey(ctx, "r", "ed25519:k2", time.Time{})
	require.NoError(t, err)
	require.Equal(t, k2.Public(), pub)
	_, err = f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
	require.ErrorIs(t, err, ErrKeyExpired)
	pub, err = f.PublicKey(ctx, "r", "ed25519:k1", clock.Now().Add(-time.Hour))
	require.NoError(t, err, "the retired key still verifies what it signed before")
	require.Equal(t, k1.Public(), pub)
}

func TestKeyFetcherDeduplicatesConcurrentFetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k1 := testKey(t, "ed25519:k1", 1)
		raw := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: time.Now().Add(time.Hour)}.build(t)
		release := make(chan struct{})
		req := &fakeRequester{respond: func(ctx context.Context, _ string) ([]byte, error) {
			<-release
			return raw, nil
		}}
		f := NewKeyFetcher(req, KeyFetcherOptions{})

		const n = 20
		results := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, results[i] = f.PublicKey(context.Background(), "r", "ed25519:k1", time.Time{})
			})
		}
		synctest.Wait() // every caller is now blocked on the one fetch
		require.Equal(t, 1, req.count("r"))
		close(release)
		wg.Wait()
		for _, err := range results {
			require.NoError(t, err)
		}
		require.Equal(t, 1, req.count("r"))
	})
}

func TestKeyFetcherCallerCancellationDoesNotAbortSharedFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k1 := testKey(t, "ed25519:k1", 1)
		raw := keyDoc{server: "r", verify: []SigningKey{k1}, validUntil: time.Now().Add(time.Hour)}.build(t)
		release := make(chan struct{})
		var fetchCtxErr atomic.Value
		req := &fakeRequester{respond: func(ctx context.Context, _ string) ([]byte, error) {
			<-release
			if err := ctx.Err(); err != nil {
				fetchCtxErr.Store(err)
				return nil, err
			}
			return raw, nil
		}}
		f := NewKeyFetcher(req, KeyFetcherOptions{})

		ctx, cancel := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() {
			_, err := f.PublicKey(ctx, "r", "ed25519:k1", time.Time{})
			firstErr <- err
		}()
		synctest.Wait()
		secondErr := make(chan error, 1)
		go func() {
			_, err := f.PublicKey(context.Background(), "r", "ed25519:k1", time.Time{})
			secondErr <- err
		}()
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-firstErr, context.Canceled)
		close(release)
		require.NoError(t, <-secondErr)
		require.Nil(t, fetchCtxErr.Load())
		require.Equal(t, 1, req.count("r"))
	})
}

func TestKeyFetcherFetchTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		req := &fakeRequester{respond: func(ctx context.Context, _ string) ([]byte, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}
		f := NewKeyFetcher(req, KeyFetcherOptions{FetchTimeout: 5 * time.Second})
		_, err := f.PublicKey(context.Background(), "r", "ed25519:k1", time.Time{})
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

func TestKeyFetcherRejectsInvalidServerName(t *testing.T) {
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return nil, errors.New("unreachable") }}
	f := NewKeyFetcher(req, KeyFetcherOptions{})
	for _, name := range []string{"", "a/b", "evil.example/path?", "user@host", "host:99999", "[::1"} {
		_, err := f.PublicKey(context.Background(), name, "ed25519:k1", time.Time{})
		require.Error(t, err, name)
	}
	require.Empty(t, req.calls)
}

func TestKeyFetcherCacheIsBounded(t *testing.T) {
	clock := newFakeClock()
	req := &fakeRequester{respond: func(context.Context, string) ([]byte, error) { return nil, errors.New("down") }}
	f := NewKeyFetcher(req, KeyFetcherOptions{Now: clock.Now, CacheSize: 16})
	for i := range 100 {
		_, err := f.PublicKey(context.Background(), fmt.Sprintf("s%d.example", i), "ed25519:k", time.Time{})
		require.Error(t, err)
	}
	f.mu.Lock()
	require.Equal(t, 16, f.servers.len(), "the least recently used servers are evicted")
	_, kept := f.servers.get("s99.example")
	_, evicted := f.servers.get("s0.example")
	f.mu.Unlock()
	require.True(t, kept)
	require.False(t, evicted)

	// The negative cache: a failed server is not fetched again within the
	// refetch interval, however often it is named.
	calls := req.count("s99.example")
	_, err := f.PublicKey(context.Background(), "s99.example", "ed25519:k", time.Time{})
	require.Error(t, err)
	require.Equal(t, calls, req.count("s99.example"))
}

func TestKeyFetcherBoundsConcurrentFetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		req := &fakeRequester{respond: func(ctx context.Context, _ string) ([]byte, error) {
			<-release
			return nil, errors.New("down")
		}}
		f := NewKeyFetcher(req, KeyFetcherOptions{MaxConcurrentFetches: 2})
		errs := make(chan error, 3)
		for i := range 3 {
			go func() {
				_, err := f.PublicKey(context.Background(), fmt.Sprintf("s%d.example", i), "ed25519:k", time.Time{})
				errs <- err
			}()
			synctest.Wait()
		}
		// The third distinct server finds both slots taken and fails at once.
		require.ErrorIs(t, <-errs, ErrKeyFetchBusy)
		close(release)
		require.NotErrorIs(t, <-errs, ErrKeyFetchBusy)
		require.NotErrorIs(t, <-errs, ErrKeyFetchBusy)
		// The refusal was not remembered as the server's failure.
		f.mu.Lock()
		st, _ := f.servers.get("s2.example")
		f.mu.Unlock()
		require.True(t, st.lastAttempt.IsZero())
	})
}

var _ KeyResolver = (*KeyFetcher)(nil)
