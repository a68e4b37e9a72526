package matrixfed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const ourName = "us.example"

// recordedRequest is what a test server saw.
type recordedRequest struct {
	method, requestURI, host, sni, contentType string
	body                                       []byte
	origin                                     string
	verifyErr                                  error
	hadTLS                                     bool
}

// federationHandler verifies X-Matrix against keys (as server name
// serverName), records the request, and answers with respond.
func federationHandler(t *testing.T, serverName string, keys KeyResolver, seen chan<- recordedRequest, respond http.HandlerFunc) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		rec := recordedRequest{
			method: r.Method, requestURI: r.RequestURI, host: r.Host, body: body,
			contentType: r.Header.Get("Content-Type"), hadTLS: r.TLS != nil,
		}
		if r.TLS != nil {
			rec.sni = r.TLS.ServerName
		}
		rec.origin, rec.verifyErr = VerifyRequest(r.Context(), r, body, serverName, keys)
		if seen != nil {
			seen <- rec
		}
		if rec.verifyErr != nil {
			rw.WriteHeader(http.StatusUnauthorized)
			_, _ = rw.Write([]byte(`{"errcode":"M_UNAUTHORIZED","error":"` + strings.ReplaceAll(rec.verifyErr.Error(), `"`, `'`) + `"}`))
			return
		}
		respond(rw, r)
	}
}

func jsonResponse(status int, body string, headers ...string) http.HandlerFunc {
	return func(rw http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			rw.Header().Set(headers[i], headers[i+1])
		}
		rw.Header().Set("Content-Type", "application/json")
		rw.WriteHeader(status)
		_, _ = rw.Write([]byte(body))
	}
}

func newTestClient(t *testing.T, key SigningKey, opts ResolverOptions, mutate func(*ClientOptions)) *Client {
	t.Helper()
	if opts.DNS == nil {
		opts.DNS = &fakeDNS{records: map[string][]*net.SRV{}, errs: map[string]error{}}
	}
	if opts.WellKnownClient == nil {
		opts.WellKnownClient = &http.Client{Transport: &wellKnownHosts{handlers: map[string]http.HandlerFunc{}}}
	}
	res, err := NewResolver(opts)
	require.NoError(t, err)
	co := ClientOptions{ServerName: ourName, Key: key, Resolver: res}
	if mutate != nil {
		mutate(&co)
	}
	c, err := NewClient(co)
	require.NoError(t, err)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestClientPlainHTTPOverride(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	keys := staticKeys{ourName + "|ed25519:c1": key.Public()}
	seen := make(chan recordedRequest, 1)
	srv := httptest.NewServer(federationHandler(t, "remote.example", keys, seen, jsonResponse(200, `{"pdus":{},"extra":[1,2]}`)))
	defer srv.Close()

	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}}, nil)
	var out struct {
		PDUs  map[string]any `json:"pdus"`
		Extra []int          `json:"extra"`
	}
	txn := "txn/1 ü"
	body := map[string]any{"origin": ourName, "origin_server_ts": 5, "pdus": []any{}, "edus": []any{map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{"a": "<b>"}}}}
	err := c.Do(context.Background(), "remote.example", http.MethodPut, "/_matrix/federation/v1/send/"+url.PathEscape(txn),
		url.Values{"b": {"2"}, "a": {"x y"}}, body, &out)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2}, out.Extra)
	require.NotNil(t, out.PDUs)

	rec := <-seen
	require.NoError(t, rec.verifyErr)
	require.Equal(t, ourName, rec.origin)
	require.Equal(t, http.MethodPut, rec.method)
	require.Equal(t, "/_matrix/federation/v1/send/txn%2F1%20%C3%BC?a=x+y&b=2", rec.requestURI)
	require.Equal(t, strings.TrimPrefix(srv.URL, "http://"), rec.host)
	require.Equal(t, "application/json", rec.contentType)
	require.JSONEq(t, `{"origin":"us.example","origin_server_ts":5,"pdus":[],"edus":[{"edu_type":"m.direct_to_device","content":{"a":"<b>"}}]}`, string(rec.body))
	require.False(t, rec.hadTLS)
}

func TestClientGETWithoutBody(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	keys := staticKeys{ourName + "|ed25519:c1": key.Public()}
	seen := make(chan recordedRequest, 1)
	srv := httptest.NewServer(federationHandler(t, "remote.example", keys, seen, jsonResponse(200, `{"server":{"name":"x"}}`)))
	defer srv.Close()
	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}}, nil)

	require.NoError(t, c.Do(context.Background(), "remote.example", http.MethodGet, "/_matrix/federation/v1/version", nil, nil, nil))
	rec := <-seen
	require.NoError(t, rec.verifyErr)
	require.Empty(t, rec.body)
	require.Empty(t, rec.contentType)
	require.Equal(t, "/_matrix/federation/v1/version", rec.requestURI)
}

func TestClientRawBodies(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	keys := staticKeys{ourName + "|ed25519:c1": key.Public()}
	seen := make(chan recordedRequest, 2)
	srv := httptest.NewServer(federationHandler(t, "remote.example", keys, seen, jsonResponse(200, `{}`)))
	defer srv.Close()
	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}}, nil)

	for _, body := range []any{[]byte(`{"z": 1, "a": [ ]}`), json.RawMessage(`{"z": 1, "a": [ ]}`)} {
		require.NoError(t, c.Do(context.Background(), "remote.example", http.MethodPost, "/_matrix/x", nil, body, nil))
		rec := <-seen
		require.NoError(t, rec.verifyErr)
		require.Equal(t, `{"z": 1, "a": [ ]}`, string(rec.body), "sent as given")
	}
}

func TestClientRejectsBadInputsBeforeSending(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}}, nil)
	ctx := context.Background()

	require.Error(t, c.Do(ctx, "remote.example", http.MethodPut, "/_matrix/x", nil, map[string]any{"f": 1.5}, nil), "floats cannot be signed")
	require.Error(t, c.Do(ctx, "remote.example", http.MethodPut, "/_matrix/x", nil, []byte(`{"a":`), nil))
	require.Error(t, c.Do(ctx, "remote.example", http.MethodPut, "/_matrix/x", nil, func() {}, nil))
	require.Error(t, c.Do(ctx, "remote.example", http.MethodGet, "_matrix/x", nil, nil, nil))
	require.Error(t, c.Do(ctx, "remote.example", http.MethodGet, "/_matrix/x?a=b", nil, nil, nil))
	require.Error(t, c.Do(ctx, "bad/name", http.MethodGet, "/_matrix/x", nil, nil, nil))
	require.Zero(t, hits.Load())
}

func TestNewClientValidation(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	res, err := NewResolver(ResolverOptions{})
	require.NoError(t, err)
	_, err = NewClient(ClientOptions{ServerName: "", Key: key, Resolver: res})
	require.Error(t, err)
	_, err = NewClient(ClientOptions{ServerName: ourName, Key: SigningKey{}, Resolver: res})
	require.Error(t, err)
	_, err = NewClient(ClientOptions{ServerName: ourName, Key: key})
	require.Error(t, err)
}

// tlsFixture is an HTTPS test server reachable through fake SRV records.
// httptest's certificate is valid for "example.com" and 127.0.0.1.
type tlsFixture struct {
	srv  *httptest.Server
	port uint16
	dns  *fakeDNS
	pool *x509.CertPool
}

func newTLSFixture(t *testing.T, handler http.Handler) *tlsFixture {
	t.Helper()
	srv := httptest.NewUnstartedServer(handler)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, portStr, err := net.SplitHostPort(srv.Listener.Addr().String())
	require.NoError(t, err)
	port, err := strconv.Atoi(portStr)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tlsFixture{srv: srv, port: uint16(port), dns: &fakeDNS{records: map[string][]*net.SRV{}, errs: map[string]error{}}, pool: pool}
}

// pointSRV makes name's _matrix-fed SRV record point at the test server.
func (f *tlsFixture) pointSRV(name string) {
	f.dns.records["_matrix-fed._tcp."+name] = []*net.SRV{{Target: "127.0.0.1.", Port: f.port}}
}

func TestClientTLSUsesServerNameForHostAndSNI(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	keys := staticKeys{ourName + "|ed25519:c1": key.Public()}
	seen := make(chan recordedRequest, 1)
	fx := newTLSFixture(t, federationHandler(t, "example.com", keys, seen, jsonResponse(200, `{"ok":true}`)))
	fx.pointSRV("example.com")
	c := newTestClient(t, key, ResolverOptions{DNS: fx.dns}, func(o *ClientOptions) { o.TLSConfig = &tls.Config{RootCAs: fx.pool} })

	var out struct{ OK bool }
	require.NoError(t, c.Do(context.Background(), "example.com", http.MethodGet, "/_matrix/federation/v1/version", nil, nil, &out))
	require.True(t, out.OK)
	rec := <-seen
	require.NoError(t, rec.verifyErr)
	require.True(t, rec.hadTLS)
	require.Equal(t, "example.com", rec.host, "Host is the server name, not the SRV target")
	require.Equal(t, "example.com", rec.sni, "SNI is the server name, not the SRV target")
}

func TestClientTLSRejectsCertificateForOtherName(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	var hits atomic.Int32
	fx := newTLSFixture(t, http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = rw.Write([]byte(`{}`))
	}))
	fx.pointSRV("example.com")
	fx.pointSRV("impostor.test")
	c := newTestClient(t, key, ResolverOptions{DNS: fx.dns}, func(o *ClientOptions) { o.TLSConfig = &tls.Config{RootCAs: fx.pool} })
	ctx := context.Background()

	// Pool a verified connection for example.com first: the same address
	// must still not serve impostor.test without its own verification.
	require.NoError(t, c.Do(ctx, "example.com", http.MethodGet, "/_matrix/x", nil, nil, nil))
	err := c.Do(ctx, "impostor.test", http.MethodGet, "/_matrix/x", nil, nil, nil)
	require.Error(t, err)
	var certErr *tls.CertificateVerificationError
	require.True(t, errors.As(err, &certErr), "got %v", err)
	var httpErr *HTTPError
	require.False(t, errors.As(err, &httpErr))
	require.Contains(t, err.Error(), "impostor.test")
	require.NotContains(t, err.Error(), dialHostSuffix, "errors name real addresses")
	require.Equal(t, int32(1), hits.Load())

	// Unknown CA is rejected too.
	c2 := newTestClient(t, key, ResolverOptions{DNS: fx.dns}, nil)
	err = c2.Do(ctx, "example.com", http.MethodGet, "/_matrix/x", nil, nil, nil)
	require.True(t, errors.As(err, &certErr), "got %v", err)

	// InsecureSkipVerify is an explicit opt-out.
	c3 := newTestClient(t, key, ResolverOptions{DNS: fx.dns}, func(o *ClientOptions) { o.InsecureSkipVerify = true })
	require.NoError(t, c3.Do(ctx, "impostor.test", http.MethodGet, "/_matrix/x", nil, nil, nil))
}

func TestClientTLSToIPLiteral(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	keys := staticKeys{ourName + "|ed25519:c1": key.Public()}
	seen := make(chan recordedRequest, 1)
	fx := newTLSFixture(t, nil)
	name := "127.0.0.1:" + strconv.Itoa(int(fx.port))
	fx.srv.Config.Handler = federationHandler(t, name, keys, seen, jsonResponse(200, `{}`))
	c := newTestClient(t, key, ResolverOptions{DNS: fx.dns}, func(o *ClientOptions) { o.TLSConfig = &tls.Config{RootCAs: fx.pool} })

	require.NoError(t, c.Do(context.Background(), name, http.MethodGet, "/_matrix/x", nil, nil, nil))
	rec := <-seen
	require.NoError(t, rec.verifyErr)
	require.Equal(t, name, rec.host)
	require.Empty(t, rec.sni, "no SNI is sent for IP addresses")
}

func TestClientTLSOverride(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	keys := staticKeys{ourName + "|ed25519:c1": key.Public()}
	seen := make(chan recordedRequest, 1)
	fx := newTLSFixture(t, federationHandler(t, "remote.example", keys, seen, jsonResponse(200, `{}`)))
	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": fx.srv.URL}},
		func(o *ClientOptions) { o.TLSConfig = &tls.Config{RootCAs: fx.pool} })
	require.NoError(t, c.Do(context.Background(), "remote.example", http.MethodGet, "/_matrix/x", nil, nil, nil))
	rec := <-seen
	require.NoError(t, rec.verifyErr)
	require.True(t, rec.hadTLS)
}

func TestClientHTTPErrors(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	clock := newFakeClock()
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    HTTPError
	}{
		{"rate limited with retry_after_ms", jsonResponse(429, `{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":1500}`),
			HTTPError{Status: 429, Errcode: "M_LIMIT_EXCEEDED", Message: "slow down", RetryAfter: 1500 * time.Millisecond}},
		{"Retry-After seconds wins", jsonResponse(429, `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":1500}`, "Retry-After", "7"),
			HTTPError{Status: 429, Errcode: "M_LIMIT_EXCEEDED", RetryAfter: 7 * time.Second}},
		{"Retry-After date", jsonResponse(503, `{}`, "Retry-After", clock.Now().Add(90*time.Second).Format(http.TimeFormat)),
			HTTPError{Status: 503, RetryAfter: 90 * time.Second}},
		{"Retry-After in the past", jsonResponse(503, `{}`, "Retry-After", clock.Now().Add(-time.Hour).Format(http.TimeFormat)),
			HTTPError{Status: 503}},
		{"forbidden", jsonResponse(403, `{"errcode":"M_FORBIDDEN","error":"no"}`), HTTPError{Status: 403, Errcode: "M_FORBIDDEN", Message: "no"}},
		{"unrecognized", jsonResponse(404, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`),
			HTTPError{Status: 404, Errcode: "M_UNRECOGNIZED", Message: "Unrecognized request"}},
		{"HTML 502", func(rw http.ResponseWriter, _ *http.Request) {
			rw.WriteHeader(502)
			_, _ = rw.Write([]byte("<html>bad gateway</html>"))
		}, HTTPError{Status: 502}},
		{"redirect not followed", func(rw http.ResponseWriter, r *http.Request) {
			http.Redirect(rw, r, "/_matrix/elsewhere", http.StatusFound)
		}, HTTPError{Status: 302}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				tc.handler(rw, r)
			}))
			defer srv.Close()
			c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}},
				func(o *ClientOptions) { o.Now = clock.Now })
			var out map[string]any
			err := c.Do(context.Background(), "remote.example", http.MethodGet, "/_matrix/x", nil, nil, &out)
			var httpErr *HTTPError
			require.True(t, errors.As(err, &httpErr), "got %v", err)
			require.Equal(t, tc.want, *httpErr)
			require.Nil(t, out)
			require.Equal(t, int32(1), hits.Load())
		})
	}
	require.Equal(t, "HTTP 429 M_LIMIT_EXCEEDED: slow down (retry after 1.5s)",
		(&HTTPError{Status: 429, Errcode: "M_LIMIT_EXCEEDED", Message: "slow down", RetryAfter: 1500 * time.Millisecond}).Error())
}

func TestClientBadResponses(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	cases := map[string]http.HandlerFunc{
		"not JSON":  jsonResponse(200, `<html>`),
		"too large": jsonResponse(200, `{"a":"`+strings.Repeat("x", 200)+`"}`),
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(h)
			defer srv.Close()
			c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}},
				func(o *ClientOptions) { o.MaxResponseBytes = 100 })
			var out map[string]any
			err := c.Do(context.Background(), "remote.example", http.MethodGet, "/_matrix/x", nil, nil, &out)
			require.ErrorIs(t, err, ErrBadResponse)
		})
	}
	// Exactly at the limit is fine.
	body := `{"a":"` + strings.Repeat("x", 100-8) + `"}`
	require.Len(t, body, 100)
	srv := httptest.NewServer(jsonResponse(200, body))
	defer srv.Close()
	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}},
		func(o *ClientOptions) { o.MaxResponseBytes = 100 })
	var out map[string]string
	require.NoError(t, c.Do(context.Background(), "remote.example", http.MethodGet, "/_matrix/x", nil, nil, &out))
	require.Len(t, out["a"], 92)
}

func TestClientNetworkErrorsAreDistinguishable(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now

	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": "http://" + addr}}, nil)
	err = c.Do(context.Background(), "remote.example", http.MethodGet, "/_matrix/x", nil, nil, nil)
	require.Error(t, err)
	var httpErr *HTTPError
	require.False(t, errors.As(err, &httpErr))
	require.False(t, errors.Is(err, ErrBadResponse))
	var opErr *net.OpError
	require.True(t, errors.As(err, &opErr), "got %v", err)
	require.Contains(t, err.Error(), "remote.example")
}

func TestClientContextCanceled(t *testing.T) {
	key := testKey(t, "ed25519:c1", 3)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := newTestClient(t, key, ResolverOptions{Overrides: map[string]string{"remote.example": srv.URL}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errCh := make(chan error, 1)
	go func() { errCh <- c.Do(ctx, "remote.example", http.MethodGet, "/_matrix/x", nil, nil, nil) }()
	cancel()
	require.ErrorIs(t, <-errCh, context.Canceled)
}

func TestDialHostEncoding(t *testing.T) {
	for _, tc := range [][2]string{{"127.0.0.1:8448", "example.com"}, {"[2001:db8::1]:443", "2001:db8::1"}, {"h:1", ""}} {
		host := dialHostFor(tc[0], tc[1])
		u, err := url.Parse("https://" + host + "/x")
		require.NoError(t, err)
		addr, name, ok := parseDialHost(u.Hostname())
		require.True(t, ok)
		require.Equal(t, tc[0], addr)
		require.Equal(t, tc[1], name)
	}
	for _, h := range []string{"example.com", "a12.nzz" + dialHostSuffix, "x" + dialHostSuffix, "a31" + dialHostSuffix} {
		_, _, ok := parseDialHost(h)
		require.False(t, ok, h)
	}
}

// TestEndToEnd has one server send to another, which authenticates the
// request by fetching the sender's published keys over HTTP with its own
// Client and KeyFetcher — all of the package's parts together.
func TestEndToEnd(t *testing.T) {
	senderKey := testKey(t, "ed25519:sender", 11)
	receiverKey := testKey(t, "ed25519:receiver", 12)
	const senderName, receiverName = "sender.test", "receiver.test"

	// The sender publishes its keys.
	senderSrv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path != KeyServerPath {
			http.NotFound(rw, r)
			return
		}
		body, err := ServerKeyResponse(senderName, senderKey, nil, 24*time.Hour, time.Now())
		require.NoError(t, err)
		rw.Header().Set("Content-Type", "application/json")
		_, _ = rw.Write(body)
	}))
	defer senderSrv.Close()

	// The receiver verifies with a KeyFetcher that fetches through its own
	// federation client.
	var receiverSrv *httptest.Server
	overrides := func() map[string]string {
		return map[string]string{senderName: senderSrv.URL, receiverName: receiverSrv.URL}
	}
	var fetcher atomic.Pointer[KeyFetcher]
	var lastOrigin atomic.Value
	receiverSrv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		origin, err := VerifyRequest(r.Context(), r, body, receiverName, fetcher.Load())
		switch {
		case errors.Is(err, ErrMalformedAuth):
			jsonResponse(400, `{"errcode":"M_UNAUTHORIZED"}`)(rw, r)
		case err != nil:
			jsonResponse(401, `{"errcode":"M_UNAUTHORIZED"}`)(rw, r)
		default:
			lastOrigin.Store(origin)
			jsonResponse(200, `{"pdus":{}}`)(rw, r)
		}
	}))
	defer receiverSrv.Close()

	receiverClient := newTestClient(t, receiverKey, ResolverOptions{Overrides: overrides()}, func(o *ClientOptions) { o.ServerName = receiverName })
	fetcher.Store(NewKeyFetcher(receiverClient, KeyFetcherOptions{}))
	senderClient := newTestClient(t, senderKey, ResolverOptions{Overrides: overrides()}, func(o *ClientOptions) { o.ServerName = senderName })

	txn := map[string]any{"origin": senderName, "origin_server_ts": 1, "pdus": []any{},
		"edus": []any{map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{"message_id": "m1"}}}}
	var out map[string]any
	require.NoError(t, senderClient.Do(context.Background(), receiverName, http.MethodPut, "/_matrix/federation/v1/send/t1", nil, txn, &out))
	require.Equal(t, senderName, lastOrigin.Load())

	// A different key under the sender's name is refused.
	forger := newTestClient(t, testKey(t, "ed25519:sender", 99), ResolverOptions{Overrides: overrides()}, func(o *ClientOptions) { o.ServerName = senderName })
	err := forger.Do(context.Background(), receiverName, http.MethodPut, "/_matrix/federation/v1/send/t2", nil, txn, &out)
	var httpErr *HTTPError
	require.True(t, errors.As(err, &httpErr), "got %v", err)
	require.Equal(t, 401, httpErr.Status)
}
