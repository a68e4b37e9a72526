package matrixfed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeDNS answers SRV lookups from a map keyed "_service._proto.name".
type fakeDNS struct {
	mu      sync.Mutex
	records map[string][]*net.SRV
	errs    map[string]error
	queries []string
}

func (f *fakeDNS) LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
	key := "_" + service + "._" + proto + "." + name
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = append(f.queries, key)
	if err := f.errs[key]; err != nil {
		return "", nil, err
	}
	recs, ok := f.records[key]
	if !ok {
		return "", nil, &net.DNSError{Err: "no such host", Name: key, IsNotFound: true}
	}
	return key, recs, nil
}

func (f *fakeDNS) queried() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.queries...)
}

// wellKnownHosts serves HTTPS requests in-process by Host, so that
// .well-known fetches need no network. Unknown hosts fail like an unreachable
// server.
type wellKnownHosts struct {
	mu       sync.Mutex
	handlers map[string]http.HandlerFunc
	requests map[string]int
}

func (w *wellKnownHosts) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("well-known must use https, got %s", req.URL)
	}
	w.mu.Lock()
	if w.requests == nil {
		w.requests = make(map[string]int)
	}
	w.requests[req.URL.Host]++
	h := w.handlers[req.URL.Host]
	w.mu.Unlock()
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	}
	rec := httptest.NewRecorder()
	h(rec, req)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

func (w *wellKnownHosts) count(host string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.requests[host]
}

func (w *wellKnownHosts) set(host string, h http.HandlerFunc) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handlers[host] = h
}

func serveJSON(body string, headers ...string) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/matrix/server" {
			http.NotFound(rw, r)
			return
		}
		for i := 0; i+1 < len(headers); i += 2 {
			rw.Header().Set(headers[i], headers[i+1])
		}
		_, _ = rw.Write([]byte(body))
	}
}

type discoveryFixture struct {
	dns   *fakeDNS
	wk    *wellKnownHosts
	clock *fakeClock
	r     *Resolver
}

func newDiscoveryFixture(t *testing.T, overrides map[string]string) *discoveryFixture {
	t.Helper()
	f := &discoveryFixture{
		dns:   &fakeDNS{records: map[string][]*net.SRV{}, errs: map[string]error{}},
		wk:    &wellKnownHosts{handlers: map[string]http.HandlerFunc{}},
		clock: newFakeClock(),
	}
	r, err := NewResolver(ResolverOptions{
		Overrides:       overrides,
		DNS:             f.dns,
		WellKnownClient: &http.Client{Transport: f.wk},
		Now:             f.clock.Now,
	})
	require.NoError(t, err)
	f.r = r
	return f
}

func (f *discoveryFixture) resolve(t *testing.T, name string) Destination {
	t.Helper()
	d, err := f.r.Resolve(context.Background(), name)
	require.NoError(t, err)
	require.Equal(t, name, d.ServerName)
	return d
}

type wantDest struct{ url, host, sni string }

func requireDest(t *testing.T, want wantDest, got Destination) {
	t.Helper()
	require.Equal(t, want, wantDest{got.URL.String(), got.Host, got.TLSServerName})
}

func TestResolveLiteralsAndExplicitPorts(t *testing.T) {
	cases := []struct {
		name string
		want wantDest
	}{
		{"192.0.2.7", wantDest{"https://192.0.2.7:8448", "192.0.2.7", "192.0.2.7"}},
		{"192.0.2.7:1234", wantDest{"https://192.0.2.7:1234", "192.0.2.7:1234", "192.0.2.7"}},
		{"[2001:db8::1]", wantDest{"https://[2001:db8::1]:8448", "[2001:db8::1]", "2001:db8::1"}},
		{"[2001:db8::1]:443", wantDest{"https://[2001:db8::1]:443", "[2001:db8::1]:443", "2001:db8::1"}},
		{"matrix.example.org:8888", wantDest{"https://matrix.example.org:8888", "matrix.example.org:8888", "matrix.example.org"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newDiscoveryFixture(t, nil)
			requireDest(t, tc.want, f.resolve(t, tc.name))
			require.Empty(t, f.dns.queried(), "no DNS lookups for literals or explicit ports")
			require.Empty(t, f.wk.requests, "no .well-known for literals or explicit ports")
		})
	}
}

func TestResolveWellKnownDelegation(t *testing.T) {
	t.Run("to an IP literal", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", serveJSON(`{"m.server":"192.0.2.9"}`))
		requireDest(t, wantDest{"https://192.0.2.9:8448", "192.0.2.9", "192.0.2.9"}, f.resolve(t, "example.org"))
		require.Empty(t, f.dns.queried())
	})
	t.Run("to an IPv6 literal with port", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", serveJSON(`{"m.server":"[2001:db8::9]:8000"}`))
		requireDest(t, wantDest{"https://[2001:db8::9]:8000", "[2001:db8::9]:8000", "2001:db8::9"}, f.resolve(t, "example.org"))
	})
	t.Run("to a host with port", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", serveJSON(`{"m.server":"matrix.example.net:443"}`))
		// SRV records must not be consulted when a port is given.
		f.dns.records["_matrix-fed._tcp.matrix.example.net"] = []*net.SRV{{Target: "wrong.example.", Port: 1}}
		requireDest(t, wantDest{"https://matrix.example.net:443", "matrix.example.net:443", "matrix.example.net"}, f.resolve(t, "example.org"))
		require.Empty(t, f.dns.queried())
	})
	t.Run("to a host with matrix-fed SRV", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", serveJSON(`{"m.server":"matrix.example.net"}`))
		f.dns.records["_matrix-fed._tcp.matrix.example.net"] = []*net.SRV{{Target: "fed1.example.net.", Port: 8449, Priority: 10}}
		f.dns.records["_matrix._tcp.matrix.example.net"] = []*net.SRV{{Target: "legacy.example.net.", Port: 1}}
		requireDest(t, wantDest{"https://fed1.example.net:8449", "matrix.example.net", "matrix.example.net"}, f.resolve(t, "example.org"))
		require.Equal(t, []string{"_matrix-fed._tcp.matrix.example.net"}, f.dns.queried())
	})
	t.Run("to a host with only the deprecated SRV", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", serveJSON(`{"m.server":"matrix.example.net"}`))
		f.dns.records["_matrix._tcp.matrix.example.net"] = []*net.SRV{{Target: "legacy.example.net.", Port: 8450}}
		requireDest(t, wantDest{"https://legacy.example.net:8450", "matrix.example.net", "matrix.example.net"}, f.resolve(t, "example.org"))
		require.Equal(t, []string{"_matrix-fed._tcp.matrix.example.net", "_matrix._tcp.matrix.example.net"}, f.dns.queried())
	})
	t.Run("to a host without SRV", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", serveJSON(`{"m.server":"matrix.example.net"}`))
		// SRV records of the original name are not used once delegated.
		f.dns.records["_matrix-fed._tcp.example.org"] = []*net.SRV{{Target: "wrong.example.", Port: 1}}
		requireDest(t, wantDest{"https://matrix.example.net:8448", "matrix.example.net", "matrix.example.net"}, f.resolve(t, "example.org"))
	})
	t.Run("redirects are followed", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", func(rw http.ResponseWriter, r *http.Request) {
			http.Redirect(rw, r, "https://www.example.org/.well-known/matrix/server", http.StatusMovedPermanently)
		})
		f.wk.set("www.example.org", serveJSON(`{"m.server":"matrix.example.net:443"}`))
		requireDest(t, wantDest{"https://matrix.example.net:443", "matrix.example.net:443", "matrix.example.net"}, f.resolve(t, "example.org"))
	})
	t.Run("redirect loops end in no delegation", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.wk.set("example.org", func(rw http.ResponseWriter, r *http.Request) {
			http.Redirect(rw, r, "https://example.org/.well-known/matrix/server", http.StatusFound)
		})
		requireDest(t, wantDest{"https://example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
		require.LessOrEqual(t, f.wk.count("example.org"), 11)
	})
}

func TestResolveWithoutDelegation(t *testing.T) {
	t.Run("matrix-fed SRV on the server name", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.dns.records["_matrix-fed._tcp.example.org"] = []*net.SRV{
			{Target: "backup.example.org.", Port: 9000, Priority: 20},
			{Target: ".", Port: 0, Priority: 1},
			{Target: "primary.example.org.", Port: 8443, Priority: 10},
		}
		requireDest(t, wantDest{"https://primary.example.org:8443", "example.org", "example.org"}, f.resolve(t, "example.org"))
		require.Equal(t, 1, f.wk.count("example.org"), ".well-known is tried first")
	})
	t.Run("deprecated matrix SRV on the server name", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.dns.records["_matrix._tcp.example.org"] = []*net.SRV{{Target: "old.example.org.", Port: 8448}}
		requireDest(t, wantDest{"https://old.example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
	})
	t.Run("only a null SRV target", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.dns.records["_matrix-fed._tcp.example.org"] = []*net.SRV{{Target: ".", Port: 0}}
		requireDest(t, wantDest{"https://example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
	})
	t.Run("invalid SRV target", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.dns.records["_matrix-fed._tcp.example.org"] = []*net.SRV{{Target: "evil/path.", Port: 80}}
		requireDest(t, wantDest{"https://example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
	})
	t.Run("SRV lookup error falls through", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		f.dns.errs["_matrix-fed._tcp.example.org"] = &net.DNSError{Err: "server misbehaving", IsTemporary: true}
		f.dns.records["_matrix._tcp.example.org"] = []*net.SRV{{Target: "old.example.org.", Port: 8448}}
		requireDest(t, wantDest{"https://old.example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
	})
	t.Run("nothing at all", func(t *testing.T) {
		f := newDiscoveryFixture(t, nil)
		requireDest(t, wantDest{"https://example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
		require.Equal(t, []string{"_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"}, f.dns.queried())
	})
}

func TestResolveInvalidWellKnownFallsThrough(t *testing.T) {
	cases := map[string]http.HandlerFunc{
		"404":             http.NotFound,
		"500":             func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusInternalServerError) },
		"not JSON":        serveJSON(`<html>hello</html>`),
		"no m.server":     serveJSON(`{"m.homeserver":"x"}`),
		"m.server number": serveJSON(`{"m.server":5}`),
		"invalid name":    serveJSON(`{"m.server":"evil.example/path"}`),
		"empty name":      serveJSON(`{"m.server":""}`),
		"bad port":        serveJSON(`{"m.server":"a.example:0"}`),
		"too large": func(rw http.ResponseWriter, _ *http.Request) {
			_, _ = rw.Write([]byte(`{"m.server":"a.example:443","pad":"`))
			_, _ = rw.Write(make([]byte, maxWellKnownBytes))
			_, _ = rw.Write([]byte(`"}`))
		},
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			f := newDiscoveryFixture(t, nil)
			f.wk.set("example.org", h)
			f.dns.records["_matrix-fed._tcp.example.org"] = []*net.SRV{{Target: "fed.example.org.", Port: 8448}}
			requireDest(t, wantDest{"https://fed.example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))
		})
	}
}

func TestResolveContentTypeIgnored(t *testing.T) {
	f := newDiscoveryFixture(t, nil)
	f.wk.set("example.org", serveJSON(`{"m.server":"m.example.org:443"}`, "Content-Type", "text/plain"))
	requireDest(t, wantDest{"https://m.example.org:443", "m.example.org:443", "m.example.org"}, f.resolve(t, "example.org"))
}

func TestResolveOverrides(t *testing.T) {
	f := newDiscoveryFixture(t, map[string]string{
		"hs1.test":         "http://127.0.0.1:18008",
		"hs2.test":         "https://localhost:18448/",
		"192.0.2.1":        "http://127.0.0.1:1",
		"example.org:8448": "https://127.0.0.1:2",
	})
	requireDest(t, wantDest{"http://127.0.0.1:18008", "127.0.0.1:18008", "127.0.0.1"}, f.resolve(t, "hs1.test"))
	requireDest(t, wantDest{"https://localhost:18448", "localhost:18448", "localhost"}, f.resolve(t, "hs2.test"))
	requireDest(t, wantDest{"http://127.0.0.1:1", "127.0.0.1:1", "127.0.0.1"}, f.resolve(t, "192.0.2.1"))
	requireDest(t, wantDest{"https://127.0.0.1:2", "127.0.0.1:2", "127.0.0.1"}, f.resolve(t, "example.org:8448"))
	require.Empty(t, f.dns.queried())
	require.Empty(t, f.wk.requests)

	// The returned URL is a copy: changing it does not change the override.
	d := f.resolve(t, "hs1.test")
	d.URL.Host = "changed"
	requireDest(t, wantDest{"http://127.0.0.1:18008", "127.0.0.1:18008", "127.0.0.1"}, f.resolve(t, "hs1.test"))

	for _, bad := range []string{"127.0.0.1:1", "ftp://x", "http://", "http://x/prefix", "http://x?q=1", "http://u:p@x", "%zz"} {
		_, err := NewResolver(ResolverOptions{Overrides: map[string]string{"a": bad}})
		require.Error(t, err, bad)
	}
}

func TestResolveInvalidServerNames(t *testing.T) {
	f := newDiscoveryFixture(t, nil)
	for _, name := range []string{
		"", "example.org/path", "user@example.org", "example.org:", "example.org:65536", "example.org:0",
		"example.org:123456", "example.org:8a", "[2001:db8::1", "[2001:db8::1]x", "[192.0.2.1]", "[g::1]",
		"exa mple.org", "example.org:80:80", "éxample.org", string(make([]byte, 300)),
	} {
		_, err := f.r.Resolve(context.Background(), name)
		require.Error(t, err, "%q", name)
	}
	require.Empty(t, f.dns.queried())
	require.Empty(t, f.wk.requests)
}

func TestResolveWellKnownCaching(t *testing.T) {
	f := newDiscoveryFixture(t, nil)
	f.wk.set("example.org", serveJSON(`{"m.server":"m.example.org:443"}`))
	want := wantDest{"https://m.example.org:443", "m.example.org:443", "m.example.org"}

	requireDest(t, want, f.resolve(t, "example.org"))
	f.clock.Advance(DefaultWellKnownCacheTTL - time.Second)
	requireDest(t, want, f.resolve(t, "example.org"))
	require.Equal(t, 1, f.wk.count("example.org"), "cached for 24h by default")

	f.clock.Advance(time.Second)
	f.wk.set("example.org", serveJSON(`{"m.server":"m2.example.org:443"}`, "Cache-Control", "public, max-age=3600"))
	requireDest(t, wantDest{"https://m2.example.org:443", "m2.example.org:443", "m2.example.org"}, f.resolve(t, "example.org"))
	require.Equal(t, 2, f.wk.count("example.org"))

	f.clock.Advance(59 * time.Minute)
	f.resolve(t, "example.org")
	require.Equal(t, 2, f.wk.count("example.org"))
	f.clock.Advance(time.Minute)
	f.resolve(t, "example.org")
	require.Equal(t, 3, f.wk.count("example.org"), "max-age=3600 respected")
}

func TestResolveWellKnownErrorCaching(t *testing.T) {
	f := newDiscoveryFixture(t, nil)
	f.wk.set("example.org", http.NotFound)
	fallback := wantDest{"https://example.org:8448", "example.org", "example.org"}

	requireDest(t, fallback, f.resolve(t, "example.org"))
	f.wk.set("example.org", serveJSON(`{"m.server":"m.example.org:443"}`))
	f.clock.Advance(DefaultWellKnownErrorTTL - time.Second)
	requireDest(t, fallback, f.resolve(t, "example.org"))
	require.Equal(t, 1, f.wk.count("example.org"), "errors are cached for an hour")

	f.clock.Advance(time.Second)
	requireDest(t, wantDest{"https://m.example.org:443", "m.example.org:443", "m.example.org"}, f.resolve(t, "example.org"))
	require.Equal(t, 2, f.wk.count("example.org"))
}

func TestResolveWellKnownTransientFailureKeepsLastGoodAnswer(t *testing.T) {
	f := newDiscoveryFixture(t, nil)
	good := wantDest{"https://m.example.org:443", "m.example.org:443", "m.example.org"}
	f.wk.set("example.org", serveJSON(`{"m.server":"m.example.org:443"}`))
	requireDest(t, good, f.resolve(t, "example.org"))

	// The web server breaks after the answer expired: keep using it, and
	// retry soon rather than in an hour.
	f.clock.Advance(DefaultWellKnownCacheTTL)
	f.wk.set("example.org", func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusBadGateway) })
	requireDest(t, good, f.resolve(t, "example.org"))
	require.Equal(t, 2, f.wk.count("example.org"))
	f.clock.Advance(DefaultWellKnownStaleRetry)
	f.wk.set("example.org", nil) // now unreachable
	requireDest(t, good, f.resolve(t, "example.org"))
	require.Equal(t, 3, f.wk.count("example.org"))

	// A definite answer (404) ends the delegation at once.
	f.clock.Advance(DefaultWellKnownStaleRetry)
	f.wk.set("example.org", http.NotFound)
	requireDest(t, wantDest{"https://example.org:8448", "example.org", "example.org"}, f.resolve(t, "example.org"))

	// And a stale answer is not used forever.
	f2 := newDiscoveryFixture(t, nil)
	f2.wk.set("example.org", serveJSON(`{"m.server":"m.example.org:443"}`))
	f2.resolve(t, "example.org")
	f2.wk.set("example.org", nil)
	f2.clock.Advance(DefaultWellKnownCacheTTL + wellKnownStaleGrace)
	requireDest(t, wantDest{"https://example.org:8448", "example.org", "example.org"}, f2.resolve(t, "example.org"))
}

func TestResolveContextCanceled(t *testing.T) {
	f := newDiscoveryFixture(t, nil)
	f.wk.set("example.org", serveJSON(`{"m.server":"m.example.org:443"}`))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.r.Resolve(ctx, "example.org")
	require.ErrorIs(t, err, context.Canceled)
	// Nothing was cached by the aborted attempt.
	requireDest(t, wantDest{"https://m.example.org:443", "m.example.org:443", "m.example.org"}, f.resolve(t, "example.org"))
}

func TestWellKnownTTL(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name    string
		headers map[string]string
		want    time.Duration
	}{
		{"no headers", nil, 24 * time.Hour},
		{"max-age", map[string]string{"Cache-Control": "max-age=7200"}, 2 * time.Hour},
		{"max-age among others", map[string]string{"Cache-Control": "public, Max-Age = 7200 , must-revalidate"}, 2 * time.Hour},
		{"max-age quoted", map[string]string{"Cache-Control": `max-age="7200"`}, 2 * time.Hour},
		{"max-age below minimum", map[string]string{"Cache-Control": "max-age=10"}, MinWellKnownCacheTTL},
		{"max-age above maximum", map[string]string{"Cache-Control": "max-age=9999999999999"}, 48 * time.Hour},
		{"no-store", map[string]string{"Cache-Control": "no-store, max-age=7200"}, MinWellKnownCacheTTL},
		{"no-cache", map[string]string{"Cache-Control": "no-cache"}, MinWellKnownCacheTTL},
		{"garbage max-age ignored", map[string]string{"Cache-Control": "max-age=soon"}, 24 * time.Hour},
		{"expires", map[string]string{"Expires": now.Add(3 * time.Hour).Format(http.TimeFormat)}, 3 * time.Hour},
		{"expires in the past", map[string]string{"Expires": now.Add(-time.Hour).Format(http.TimeFormat)}, MinWellKnownCacheTTL},
		{"invalid expires", map[string]string{"Expires": "0"}, MinWellKnownCacheTTL},
		{"cache-control beats expires", map[string]string{"Cache-Control": "max-age=3600", "Expires": now.Add(10 * time.Hour).Format(http.TimeFormat)}, time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			require.Equal(t, tc.want, wellKnownTTL(h, now))
		})
	}
}
