package matrixfed

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Defaults of ClientOptions. Every phase of an outbound request has its own
// deadline, and the request as a whole has one more: a peer that accepts a
// connection and then never answers (a tarpit) costs a goroutine and a
// descriptor for at most these times (DESIGN invariant 14).
const (
	DefaultMaxResponseBytes = 16 << 20
	// DefaultDialTimeout bounds the TCP connect.
	DefaultDialTimeout = 10 * time.Second
	// DefaultTLSHandshakeTimeout bounds the TLS handshake. net/http dials
	// on a goroutine of its own that outlives a cancelled request, so the
	// handshake needs a limit of its own, not just the request's.
	DefaultTLSHandshakeTimeout = 10 * time.Second
	// DefaultResponseHeaderTimeout bounds the wait for the response
	// headers once the request is written (the receiver processes a whole
	// transaction before it answers).
	DefaultResponseHeaderTimeout = 45 * time.Second
	// DefaultBodyTimeout bounds reading the response body once the
	// headers arrived.
	DefaultBodyTimeout = 30 * time.Second
	// DefaultRequestTimeout bounds a whole request: discovery, connect,
	// handshake, writing, headers and body.
	DefaultRequestTimeout = 60 * time.Second
	DefaultUserAgent      = "todeviced"
)

// maxResponseHeaderBytes bounds the response headers of another server.
const maxResponseHeaderBytes = 64 << 10

// maxErrorBodyBytes bounds how much of an error response is read for its
// errcode; error bodies are small, and a hostile one could be huge.
const maxErrorBodyBytes = 64 << 10

// dialHostSuffix marks the synthetic URL hosts the Client uses for HTTPS
// destinations (see dialHostFor). ".invalid" can never resolve (RFC 2606).
const dialHostSuffix = ".todeviced-dial.invalid"

// ErrBadResponse is wrapped when a server answered 2xx but the body could not
// be read as the expected JSON (or was larger than allowed). The request did
// reach the server, unlike with network errors.
var ErrBadResponse = errors.New("bad response body")

// HTTPError is a non-2xx answer from a remote server. It is returned wrapped;
// use errors.As to get at it. Errors that are not HTTPErrors (nor
// ErrBadResponse) mean no answer was received: name resolution, connection,
// TLS and timeout failures.
type HTTPError struct {
	// Status is the HTTP status code.
	Status int
	// Errcode is the Matrix error code ("M_LIMIT_EXCEEDED"), if the body
	// had one.
	Errcode string
	// Message is the human-readable "error" of the body, if any.
	Message string
	// RetryAfter is how long the server asked us to wait, from the
	// Retry-After header or, failing that, retry_after_ms; zero if none.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d", e.Status)
	if e.Errcode != "" {
		b.WriteString(" ")
		b.WriteString(e.Errcode)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

// DestinationResolver finds where to send requests for a server name.
// *Resolver implements it.
type DestinationResolver interface {
	Resolve(ctx context.Context, serverName string) (Destination, error)
}

// ClientOptions configure a Client.
type ClientOptions struct {
	// ServerName is our own server name, the X-Matrix origin. Required.
	ServerName string
	// Key signs requests. Required.
	Key SigningKey
	// Resolver finds destinations. Required.
	Resolver DestinationResolver
	// TLSConfig is the base TLS configuration (for example RootCAs); the
	// Client sets ServerName per destination on a copy. nil means the
	// system roots.
	TLSConfig *tls.Config
	// InsecureSkipVerify turns off certificate verification. Only for
	// tests and networks where the transport is secured otherwise.
	InsecureSkipVerify bool
	// MaxResponseBytes bounds a response body (DefaultMaxResponseBytes).
	MaxResponseBytes int64
	// DialTimeout bounds connecting (DefaultDialTimeout).
	DialTimeout time.Duration
	// TLSHandshakeTimeout bounds the TLS handshake
	// (DefaultTLSHandshakeTimeout).
	TLSHandshakeTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for response headers
	// (DefaultResponseHeaderTimeout).
	ResponseHeaderTimeout time.Duration
	// BodyTimeout bounds reading a response body (DefaultBodyTimeout).
	BodyTimeout time.Duration
	// RequestTimeout bounds a whole request (DefaultRequestTimeout); the
	// caller's context may end it sooner.
	RequestTimeout time.Duration
	// UserAgent is sent with every request (DefaultUserAgent).
	UserAgent string
	// Now is the clock for Retry-After dates; time.Now when nil.
	Now func() time.Time
}

// Client sends signed federation requests. It resolves each destination with
// its DestinationResolver, connects to the resolved address while sending the
// right Host header and TLS server name, signs with X-Matrix, and decodes
// JSON answers. Redirects are not followed, since they would invalidate the
// signature. A Client is safe for concurrent use.
type Client struct {
	serverName string
	key        SigningKey
	resolver   DestinationResolver
	tlsConfig  *tls.Config
	dialer     *net.Dialer
	http       *http.Client
	tlsTimeout time.Duration
	bodyTime   time.Duration
	reqTimeout time.Duration
	maxBody    int64
	userAgent  string
	now        func() time.Time
}

// NewClient returns a Client.
func NewClient(opts ClientOptions) (*Client, error) {
	if err := matrix.ValidateServerName(opts.ServerName); err != nil {
		return nil, fmt.Errorf("creating federation client: %w", err)
	}
	if err := validateKeyID(opts.Key.ServerKeyID); err != nil {
		return nil, fmt.Errorf("creating federation client: %w", err)
	}
	if opts.Resolver == nil {
		return nil, errors.New("creating federation client: no resolver")
	}
	c := &Client{
		serverName: opts.ServerName,
		key:        opts.Key,
		resolver:   opts.Resolver,
		maxBody:    opts.MaxResponseBytes,
		userAgent:  opts.UserAgent,
		now:        opts.Now,
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxResponseBytes
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	if c.now == nil {
		c.now = time.Now
	}
	if opts.TLSConfig != nil {
		c.tlsConfig = opts.TLSConfig.Clone()
	} else {
		c.tlsConfig = &tls.Config{}
	}
	c.tlsConfig.InsecureSkipVerify = opts.InsecureSkipVerify
	if c.tlsConfig.MinVersion == 0 {
		c.tlsConfig.MinVersion = tls.VersionTLS12
	}
	if len(c.tlsConfig.NextProtos) == 0 {
		c.tlsConfig.NextProtos = []string{"h2", "http/1.1"}
	}
	c.tlsTimeout = orDefault(opts.TLSHandshakeTimeout, DefaultTLSHandshakeTimeout)
	c.bodyTime = orDefault(opts.BodyTimeout, DefaultBodyTimeout)
	c.reqTimeout = orDefault(opts.RequestTimeout, DefaultRequestTimeout)
	c.dialer = &net.Dialer{Timeout: orDefault(opts.DialTimeout, DefaultDialTimeout), KeepAlive: 30 * time.Second}
	c.http = &http.Client{
		Transport: &http.Transport{
			// No proxy: federation traffic goes where discovery says.
			Proxy:                 nil,
			DialContext:           c.dialer.DialContext,
			DialTLSContext:        c.dialTLS,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
			// Used by net/http only for TLS it does itself; dialTLS
			// applies c.tlsTimeout to ours.
			TLSHandshakeTimeout:    c.tlsTimeout,
			ResponseHeaderTimeout:  orDefault(opts.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
			MaxResponseHeaderBytes: maxResponseHeaderBytes,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// orDefault is d, or def when d is not positive.
func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// CloseIdleConnections closes pooled connections that are not in use.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Do sends a signed request to destination (a server name) and decodes a 2xx
// JSON answer into out (ignored when out is nil).
//
// path is the escaped request path, starting with "/_matrix/", for example
// "/_matrix/federation/v1/send/" + url.PathEscape(txnID); the query comes
// from query. body is nil for no body, a []byte or json.RawMessage sent as
// is, or any other value encoded with encoding/json. Bodies must be
// representable in canonical JSON (no floats), as the signature covers them.
//
// A non-2xx answer is returned as a wrapped *HTTPError; a 2xx answer whose
// body cannot be decoded wraps ErrBadResponse; anything else means no answer
// arrived.
func (c *Client) Do(ctx context.Context, destination, method, path string, query url.Values, body, out any) error {
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") {
		return fmt.Errorf("sending %s %s to %s: path must start with / and carry no query", method, path, destination)
	}
	parsedPath, err := url.Parse(path)
	if err != nil {
		return fmt.Errorf("sending %s %s to %s: %w", method, path, destination, err)
	}
	var payload []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		payload = b
	case json.RawMessage:
		payload = b
	default:
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("sending %s %s to %s: encoding body: %w", method, path, destination, err)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, c.reqTimeout)
	defer cancel()
	dest, err := c.resolver.Resolve(ctx, destination)
	if err != nil {
		return fmt.Errorf("sending %s %s to %s: %w", method, path, destination, err)
	}
	host := dest.URL.Host
	if dest.URL.Scheme == "https" {
		host = dialHostFor(dest.URL.Host, dest.TLSServerName)
	}
	reqURL := &url.URL{
		Scheme:   dest.URL.Scheme,
		Host:     host,
		Path:     parsedPath.Path,
		RawPath:  parsedPath.RawPath,
		RawQuery: query.Encode(),
	}
	var bodyReader io.Reader
	if payload != nil {
		bodyReader = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, reqURL.String(), bodyReader)
	if err != nil {
		return fmt.Errorf("sending %s %s to %s: %w", method, path, destination, err)
	}
	req.Host = dest.Host
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := SignRequest(req, c.serverName, destination, c.key, payload); err != nil {
		return fmt.Errorf("sending %s %s to %s: %w", method, path, destination, err)
	}

	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error would quote the synthetic dial URL; the parts that
		// mean something to an operator are the destination and address.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return fmt.Errorf("sending %s %s to %s (%s): %w", method, path, destination, dest.URL.Host, err)
	}
	defer resp.Body.Close()
	// The body has a deadline of its own, counted from the headers: a peer
	// that trickles it cannot hold the request for the whole RequestTimeout.
	bodyDeadline := time.AfterFunc(c.bodyTime, cancel)
	defer bodyDeadline.Stop()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		httpErr := c.httpError(resp)
		return fmt.Errorf("sending %s %s to %s: %w", method, path, destination, httpErr)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return fmt.Errorf("sending %s %s to %s: reading response: %w", method, path, destination, err)
	}
	if int64(len(data)) > c.maxBody {
		return fmt.Errorf("sending %s %s to %s: %w: larger than %d bytes", method, path, destination, ErrBadResponse, c.maxBody)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("sending %s %s to %s: %w: %w", method, path, destination, ErrBadResponse, err)
	}
	return nil
}

// httpError reads a non-2xx response into an HTTPError.
func (c *Client) httpError(resp *http.Response) *HTTPError {
	e := &HTTPError{Status: resp.StatusCode}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBodyBytes))
	var body struct {
		Errcode      string `json:"errcode"`
		Error        string `json:"error"`
		RetryAfterMS int64  `json:"retry_after_ms"`
	}
	if json.Unmarshal(data, &body) == nil {
		e.Errcode, e.Message = body.Errcode, body.Error
		if body.RetryAfterMS > 0 {
			e.RetryAfter = time.Duration(body.RetryAfterMS) * time.Millisecond
		}
	}
	// Newer spec versions prefer the standard header to retry_after_ms.
	if ra := parseRetryAfter(resp.Header.Get("Retry-After"), c.now()); ra > 0 {
		e.RetryAfter = ra
	}
	return e
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 24*time.Hour)
	}
	return 0
}

// dialHostFor encodes the address to dial and the TLS server name into one
// synthetic URL host. net/http pools connections by URL host, and the
// pairing matters: two server names may share an SRV target, but a
// connection whose certificate was checked for one name must never carry
// requests for the other. dialTLS decodes it again.
func dialHostFor(addr, serverName string) string {
	return "a" + hex.EncodeToString([]byte(addr)) + ".n" + hex.EncodeToString([]byte(serverName)) + dialHostSuffix
}

// parseDialHost reverses dialHostFor; ok is false for any other host.
func parseDialHost(host string) (addr, serverName string, ok bool) {
	rest, found := strings.CutSuffix(host, dialHostSuffix)
	if !found || !strings.HasPrefix(rest, "a") {
		return "", "", false
	}
	a, n, found := strings.Cut(rest[1:], ".n")
	if !found {
		return "", "", false
	}
	addrBytes, err1 := hex.DecodeString(a)
	nameBytes, err2 := hex.DecodeString(n)
	if err1 != nil || err2 != nil {
		return "", "", false
	}
	return string(addrBytes), string(nameBytes), true
}

// dialTLS connects to the address encoded in addr's host and performs the
// TLS handshake for the encoded server name. For a plain host (an override
// URL), the URL's own host is dialled and verified.
func (c *Client) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	realAddr, serverName, ok := parseDialHost(host)
	if !ok {
		realAddr, serverName = addr, host
	}
	raw, err := c.dialer.DialContext(ctx, network, realAddr)
	if err != nil {
		return nil, err
	}
	cfg := c.tlsConfig.Clone()
	// An IP address here makes crypto/tls verify the certificate's IP SANs
	// and send no SNI, which is what the spec asks for IP literals.
	cfg.ServerName = serverName
	conn := tls.Client(raw, cfg)
	// The dial runs on net/http's own goroutine, which outlives the
	// request that started it: without a limit of its own, a peer that
	// accepts and never answers the handshake would hold it and its
	// descriptor forever.
	hctx, cancel := context.WithTimeout(ctx, c.tlsTimeout)
	defer cancel()
	if err := conn.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s for %s: %w", realAddr, serverName, err)
	}
	return conn, nil
}
