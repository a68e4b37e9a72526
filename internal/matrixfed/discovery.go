package matrixfed

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/todeviced/todeviced/internal/matrix"
)

// DefaultFederationPort is the port a server is reached on when nothing says
// otherwise.
const DefaultFederationPort = "8448"

// Well-known caching, following the spec's recommendations: 24 hours when
// the response says nothing, at most 48 hours whatever it says, and errors
// for up to an hour. The minimum stops a "no-store" response from costing an
// extra HTTPS request for every federation request.
const (
	DefaultWellKnownCacheTTL   = 24 * time.Hour
	MaxWellKnownCacheTTL       = 48 * time.Hour
	MinWellKnownCacheTTL       = 5 * time.Minute
	DefaultWellKnownErrorTTL   = time.Hour
	DefaultWellKnownStaleRetry = 5 * time.Minute
	DefaultWellKnownTimeout    = 10 * time.Second
)

// Bounds of discovery, whose input (server names) comes from anyone who can
// send a request: the cache holds at most DefaultDiscoveryCacheSize names
// (least recently used evicted), and at most DefaultMaxConcurrentDiscoveries
// distinct names are looked up at once (concurrent lookups of one name share
// one fetch). A lookup that cannot start within its timeout fails.
const (
	DefaultDiscoveryCacheSize       = 4096
	DefaultMaxConcurrentDiscoveries = 64
)

// ErrDiscoveryBusy is wrapped when a name could not be looked up because too
// many other names were being looked up; nothing is cached for it.
var ErrDiscoveryBusy = errors.New("too many server name lookups in progress")

// wellKnownStaleGrace is how long past its expiry a good well-known answer
// may still be used while the server's well-known is temporarily failing, so
// that a web server hiccup does not reroute federation for an hour.
const wellKnownStaleGrace = 24 * time.Hour

// maxWellKnownBytes bounds the .well-known body; real ones are tiny.
const maxWellKnownBytes = 64 << 10

// Destination is where and how to send requests for one server name.
type Destination struct {
	// ServerName is the server name that was resolved.
	ServerName string
	// URL is the base URL to connect to: scheme and host:port, for example
	// https://192.0.2.7:8448 or https://matrix.example.org:443 (the host
	// may be an SRV target), or an override's base URL as configured.
	URL *url.URL
	// Host is the Host header to send: the server name, or the delegated
	// server name after .well-known delegation, never an SRV target.
	Host string
	// TLSServerName is the name the server's certificate must be valid for
	// and, unless it is an IP address, the SNI to send.
	TLSServerName string
}

// DNSResolver looks up SRV records. *net.Resolver implements it; tests
// substitute a fake.
type DNSResolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (cname string, addrs []*net.SRV, err error)
}

// ResolverOptions configure a Resolver. Zero values select the defaults.
type ResolverOptions struct {
	// Overrides maps server names to base URLs (such as
	// "http://127.0.0.1:18008") that are used as they are, bypassing
	// discovery. For tests and private deployments.
	Overrides map[string]string
	// DNS resolves SRV records; net.DefaultResolver when nil.
	DNS DNSResolver
	// WellKnownClient fetches /.well-known/matrix/server. When nil, a client
	// with normal certificate verification that follows redirects (up to
	// net/http's limit of 10, which also ends loops) is used.
	WellKnownClient *http.Client
	// WellKnownTimeout bounds one .well-known fetch (DefaultWellKnownTimeout),
	// including the wait for a free slot (MaxConcurrent).
	WellKnownTimeout time.Duration
	// DialContext connects the default WellKnownClient; a net.Dialer with
	// DefaultDialTimeout when nil. For tests and special networks.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// CacheSize bounds the .well-known cache (DefaultDiscoveryCacheSize).
	CacheSize int
	// MaxConcurrent bounds the distinct names whose .well-known is fetched
	// at once (DefaultMaxConcurrentDiscoveries).
	MaxConcurrent int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives discovery decisions at debug level and failures at
	// info; nothing is logged when nil.
	Logger *slog.Logger
}

// Resolver maps server names to Destinations with the spec's server name
// resolution ("Resolving server names"):
//
//  1. IP literal: that address, the given port or 8448.
//  2. Hostname with explicit port: that host and port.
//  3. /.well-known/matrix/server on the hostname; when it delegates to
//     "delegated[:port]": an IP literal or explicit port is used as is,
//     otherwise SRV _matrix-fed._tcp.<delegated>, then the deprecated
//     _matrix._tcp.<delegated>, then <delegated>:8448. Host header and
//     certificate name are the delegated name from here on.
//  4. SRV _matrix-fed._tcp.<hostname>.
//  5. Deprecated SRV _matrix._tcp.<hostname>.
//  6. <hostname>:8448.
//
// An SRV target only says where to connect: the Host header and certificate
// name stay the (delegated) server name, since DNS is not authenticated and
// the TLS certificate is what proves the target may speak for the name.
//
// Well-known answers are cached (see the WellKnown* constants); SRV answers
// are left to the system resolver's cache. A Resolver is safe for concurrent
// use.
type Resolver struct {
	overrides        map[string]*url.URL
	dns              DNSResolver
	wellKnownClient  *http.Client
	wellKnownTimeout time.Duration
	now              func() time.Time
	log              *slog.Logger

	// fetching deduplicates concurrent fetches of one host; slots bounds
	// fetches of distinct hosts.
	fetching singleflight.Group
	slots    chan struct{}

	mu        sync.Mutex
	wellKnown *lru[string, wellKnownEntry]
}

// wellKnownEntry is a cached .well-known outcome.
type wellKnownEntry struct {
	// delegated is the m.server value; "" when there is no delegation.
	delegated string
	expires   time.Time
	// staleUntil is how long a good answer may stand in while refetches
	// fail transiently; zero for negative entries.
	staleUntil time.Time
}

// NewResolver returns a Resolver, checking the override URLs.
func NewResolver(opts ResolverOptions) (*Resolver, error) {
	r := &Resolver{
		overrides:        make(map[string]*url.URL, len(opts.Overrides)),
		dns:              opts.DNS,
		wellKnownClient:  opts.WellKnownClient,
		wellKnownTimeout: opts.WellKnownTimeout,
		now:              opts.Now,
		log:              opts.Logger,
		wellKnown:        newLRU[string, wellKnownEntry](cmp.Or(max(opts.CacheSize, 0), DefaultDiscoveryCacheSize)),
		slots:            make(chan struct{}, cmp.Or(max(opts.MaxConcurrent, 0), DefaultMaxConcurrentDiscoveries)),
	}
	for name, raw := range opts.Overrides {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("parsing override for %s: %w", name, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") ||
			u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("override for %s: %q is not a base URL like https://host:port", name, raw)
		}
		r.overrides[name] = &url.URL{Scheme: u.Scheme, Host: u.Host}
	}
	if r.dns == nil {
		r.dns = net.DefaultResolver
	}
	if r.wellKnownTimeout <= 0 {
		r.wellKnownTimeout = DefaultWellKnownTimeout
	}
	if r.wellKnownClient == nil {
		dial := opts.DialContext
		if dial == nil {
			dial = (&net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second}).DialContext
		}
		r.wellKnownClient = &http.Client{Transport: &http.Transport{
			// Like the federation client, no proxy: discovery must see
			// the same network the requests will use.
			Proxy:       nil,
			DialContext: dial,
			// Each phase within the fetch's own timeout, so that the
			// dial goroutine (which outlives a cancelled request) ends
			// too.
			TLSHandshakeTimeout:    min(DefaultTLSHandshakeTimeout, r.wellKnownTimeout),
			ResponseHeaderTimeout:  r.wellKnownTimeout,
			MaxResponseHeaderBytes: maxResponseHeaderBytes,
			ForceAttemptHTTP2:      true,
			MaxIdleConns:           10,
			IdleConnTimeout:        30 * time.Second,
		}}
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r, nil
}

// Resolve finds the Destination for serverName. It fails only for an invalid
// server name or a context that ended: when discovery finds nothing better it
// falls back to <hostname>:8448, as the spec says, and leaves it to the
// connection attempt to fail.
func (r *Resolver) Resolve(ctx context.Context, serverName string) (Destination, error) {
	if u, ok := r.overrides[serverName]; ok {
		return Destination{ServerName: serverName, URL: cloneURL(u), Host: u.Host, TLSServerName: u.Hostname()}, nil
	}
	name, err := matrix.ParseServerName(serverName)
	if err != nil {
		return Destination{}, fmt.Errorf("resolving server name: %w", err)
	}

	// Steps 1 and 2: an IP literal or an explicit port is used directly,
	// with the server name as it is for the Host header.
	if name.IsIP() || name.Port != "" {
		return r.direct(serverName, name, serverName), nil
	}

	// Step 3: .well-known delegation.
	delegated, err := r.lookupWellKnown(ctx, name.Host)
	if err != nil {
		return Destination{}, fmt.Errorf("resolving %s: %w", serverName, err)
	}
	if delegated != "" {
		dname, err := matrix.ParseServerName(delegated)
		if err != nil {
			// lookupWellKnown validated it; this cannot happen.
			return Destination{}, fmt.Errorf("resolving %s: delegated name: %w", serverName, err)
		}
		if dname.IsIP() || dname.Port != "" {
			// The spec wants the Host header to carry the delegated
			// name as written, port included.
			return r.direct(serverName, dname, delegated), nil
		}
		dest, err := r.viaSRV(ctx, serverName, dname.Host)
		if err != nil {
			return Destination{}, fmt.Errorf("resolving %s: %w", serverName, err)
		}
		return dest, nil
	}

	// Steps 4 to 6: SRV records of the server name itself, then port 8448.
	dest, err := r.viaSRV(ctx, serverName, name.Host)
	if err != nil {
		return Destination{}, fmt.Errorf("resolving %s: %w", serverName, err)
	}
	return dest, nil
}

// direct builds a Destination that connects to name itself.
func (r *Resolver) direct(serverName string, name matrix.ServerName, hostHeader string) Destination {
	u := &url.URL{Scheme: "https", Host: name.HostPort(DefaultFederationPort)}
	r.log.Debug("resolved server name", slog.String("server", serverName), slog.String("url", u.String()), slog.String("host", hostHeader))
	return Destination{ServerName: serverName, URL: u, Host: hostHeader, TLSServerName: name.Host}
}

// viaSRV tries _matrix-fed._tcp.<host>, then the deprecated
// _matrix._tcp.<host>, then falls back to <host>:8448. Host header and
// certificate name are host in every case.
func (r *Resolver) viaSRV(ctx context.Context, serverName, host string) (Destination, error) {
	for _, service := range []string{"matrix-fed", "matrix"} {
		target, port, ok, err := r.lookupSRV(ctx, service, host)
		if err != nil {
			return Destination{}, err
		}
		if ok {
			u := &url.URL{Scheme: "https", Host: net.JoinHostPort(target, strconv.Itoa(int(port)))}
			r.log.Debug("resolved server name via SRV", slog.String("server", serverName),
				slog.String("service", service), slog.String("url", u.String()), slog.String("host", host))
			return Destination{ServerName: serverName, URL: u, Host: host, TLSServerName: host}, nil
		}
	}
	u := &url.URL{Scheme: "https", Host: net.JoinHostPort(host, DefaultFederationPort)}
	r.log.Debug("resolved server name to default port", slog.String("server", serverName), slog.String("url", u.String()))
	return Destination{ServerName: serverName, URL: u, Host: host, TLSServerName: host}, nil
}

// lookupSRV returns the first usable SRV record for _service._tcp.host. A
// lookup that fails is treated as "no record" (and logged), because the next
// discovery step still leads to a certificate check for the right name; only
// an ended context is an error.
func (r *Resolver) lookupSRV(ctx context.Context, service, host string) (target string, port uint16, ok bool, err error) {
	_, addrs, lookupErr := r.dns.LookupSRV(ctx, service, "tcp", host)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return "", 0, false, fmt.Errorf("looking up SRV _%s._tcp.%s: %w", service, host, ctxErr)
	}
	if lookupErr != nil {
		var dnsErr *net.DNSError
		if !errors.As(lookupErr, &dnsErr) || !dnsErr.IsNotFound {
			r.log.Info("SRV lookup failed", slog.String("name", "_"+service+"._tcp."+host), slog.Any("error", lookupErr))
		}
		return "", 0, false, nil
	}
	// net.Resolver already orders by priority and shuffles by weight; a
	// stable sort by priority keeps that and also orders other resolvers.
	addrs = slices.Clone(addrs)
	slices.SortStableFunc(addrs, func(a, b *net.SRV) int { return cmp.Compare(a.Priority, b.Priority) })
	for _, a := range addrs {
		t := strings.TrimSuffix(a.Target, ".")
		// "." means "service not available here" (RFC 2782).
		if t == "" || a.Port == 0 {
			continue
		}
		if n, err := matrix.ParseServerName(t); err != nil || n.Port != "" {
			r.log.Info("ignoring invalid SRV target", slog.String("name", "_"+service+"._tcp."+host), slog.String("target", a.Target))
			continue
		}
		return t, a.Port, true, nil
	}
	return "", 0, false, nil
}

// lookupWellKnown returns the delegated server name for host, or "" when
// there is none, from cache or by fetching. Only an ended context is an
// error: a failed fetch means "no delegation" (or, for a transient failure,
// the last good answer for a while).
func (r *Resolver) lookupWellKnown(ctx context.Context, host string) (string, error) {
	r.mu.Lock()
	prev, cached := r.wellKnown.get(host)
	r.mu.Unlock()
	if cached && r.now().Before(prev.expires) {
		return prev.delegated, nil
	}
	// One fetch per host however many requests ask; it runs detached from
	// any one caller (bounded by wellKnownTimeout), so a caller giving up
	// does not fail the others.
	ch := r.fetching.DoChan(host, func() (any, error) {
		return r.refreshWellKnown(host)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return "", fmt.Errorf("fetching .well-known/matrix/server of %s: %w", host, res.Err)
		}
		return res.Val.(string), nil
	case <-ctx.Done():
		return "", fmt.Errorf("fetching .well-known/matrix/server of %s: %w", host, ctx.Err())
	}
}

// refreshWellKnown fetches host's .well-known within a slot of the
// concurrency bound and caches the outcome.
func (r *Resolver) refreshWellKnown(host string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.wellKnownTimeout)
	defer cancel()
	select {
	case r.slots <- struct{}{}:
		defer func() { <-r.slots }()
	case <-ctx.Done():
		return "", ErrDiscoveryBusy
	}
	now := r.now()
	r.mu.Lock()
	prev, cached := r.wellKnown.get(host)
	r.mu.Unlock()
	if cached && now.Before(prev.expires) {
		return prev.delegated, nil // another fetch finished meanwhile
	}

	delegated, ttl, transient, err := r.fetchWellKnown(ctx, host, now)
	var entry wellKnownEntry
	switch {
	case err == nil:
		entry = wellKnownEntry{delegated: delegated, expires: now.Add(ttl), staleUntil: now.Add(ttl + wellKnownStaleGrace)}
		r.log.Debug("fetched .well-known", slog.String("host", host), slog.String("m.server", delegated), slog.Duration("ttl", ttl))
	case transient && cached && prev.delegated != "" && now.Before(prev.staleUntil):
		entry = prev
		entry.expires = now.Add(DefaultWellKnownStaleRetry)
		r.log.Info("fetching .well-known failed; using the previous answer", slog.String("host", host),
			slog.String("m.server", prev.delegated), slog.Any("error", err))
	default:
		// The negative cache: a host without a usable .well-known
		// (including one that does not answer in time) is not asked
		// again for DefaultWellKnownErrorTTL.
		entry = wellKnownEntry{expires: now.Add(DefaultWellKnownErrorTTL)}
		r.log.Debug("no .well-known delegation", slog.String("host", host), slog.Any("reason", err))
	}
	r.mu.Lock()
	r.wellKnown.put(host, entry)
	r.mu.Unlock()
	return entry.delegated, nil
}

// fetchWellKnown fetches and validates https://<host>/.well-known/matrix/server.
// transient reports failures worth retrying soon (network errors, 5xx, 429)
// as opposed to definite answers (404, invalid content).
func (r *Resolver) fetchWellKnown(ctx context.Context, host string, now time.Time) (delegated string, ttl time.Duration, transient bool, err error) {
	u := url.URL{Scheme: "https", Host: host, Path: "/.well-known/matrix/server"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", 0, false, err
	}
	resp, err := r.wellKnownClient.Do(req)
	if err != nil {
		return "", 0, true, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxWellKnownBytes))
		transient := resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
		return "", 0, transient, fmt.Errorf("GET %s: status %d", u.String(), resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWellKnownBytes+1))
	if err != nil {
		return "", 0, true, fmt.Errorf("reading %s: %w", u.String(), err)
	}
	if len(body) > maxWellKnownBytes {
		return "", 0, false, fmt.Errorf("%s is larger than %d bytes", u.String(), maxWellKnownBytes)
	}
	// The spec says to parse the body as JSON whatever its Content-Type.
	var doc struct {
		Server *string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", 0, false, fmt.Errorf("decoding %s: %w", u.String(), err)
	}
	if doc.Server == nil {
		return "", 0, false, fmt.Errorf("%s has no m.server", u.String())
	}
	if err := matrix.ValidateServerName(*doc.Server); err != nil {
		return "", 0, false, fmt.Errorf("%s: invalid m.server: %w", u.String(), err)
	}
	return *doc.Server, wellKnownTTL(resp.Header, now), false, nil
}

// wellKnownTTL derives the cache lifetime of a .well-known response from its
// Cache-Control or Expires header, within [MinWellKnownCacheTTL,
// MaxWellKnownCacheTTL].
func wellKnownTTL(h http.Header, now time.Time) time.Duration {
	ttl := DefaultWellKnownCacheTTL
	found := false
	for _, value := range h.Values("Cache-Control") {
		for _, directive := range strings.Split(value, ",") {
			name, arg, _ := strings.Cut(strings.TrimSpace(directive), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				ttl, found = 0, true
			case "max-age":
				if found && ttl == 0 {
					continue // no-store wins over max-age
				}
				if secs, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(arg), `"`), 10, 64); err == nil && secs >= 0 {
					ttl, found = time.Duration(min(secs, int64(MaxWellKnownCacheTTL/time.Second)))*time.Second, true
				}
			}
		}
	}
	if !found {
		if exp := h.Get("Expires"); exp != "" {
			if t, err := http.ParseTime(exp); err == nil {
				ttl = t.Sub(now)
			} else {
				ttl = 0 // an invalid Expires means "already expired" (RFC 9111)
			}
		}
	}
	return min(max(ttl, MinWellKnownCacheTTL), MaxWellKnownCacheTTL)
}

func cloneURL(u *url.URL) *url.URL {
	c := *u
	return &c
}
