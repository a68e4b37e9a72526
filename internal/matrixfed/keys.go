package matrixfed

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// KeyServerPath is where a homeserver publishes its signing keys.
const KeyServerPath = "/_matrix/key/v2/server"

// ErrKeyNotFound is wrapped when a server does not publish the requested key.
var ErrKeyNotFound = errors.New("server key not found")

// ErrKeyExpired is wrapped when a server's key is known but was not valid at
// the requested time.
var ErrKeyExpired = errors.New("server key not valid at that time")

// Defaults of KeyFetcherOptions.
const (
	// DefaultMaxKeyValidity is the spec's cap on how long a fetched key may
	// be trusted, whatever valid_until_ts says.
	DefaultMaxKeyValidity = 7 * 24 * time.Hour
	// DefaultKeyRefetchInterval is the least time between two fetches of one
	// server's keys.
	DefaultKeyRefetchInterval = time.Minute
	// DefaultKeyFetchTimeout bounds one key fetch.
	DefaultKeyFetchTimeout = 30 * time.Second
)

// Bounds of key fetching, whose input (origins in X-Matrix headers) comes
// from requests that have not proven anything yet.
const (
	// DefaultKeyCacheSize bounds the servers whose keys (or last failure)
	// are remembered; the least recently used is evicted beyond it.
	DefaultKeyCacheSize = 4096
	// DefaultMaxConcurrentKeyFetches bounds the distinct servers whose
	// keys are fetched at once. A lookup that would start one more fails
	// at once (ErrKeyFetchBusy), without waiting and without being
	// remembered as the server's failure.
	DefaultMaxConcurrentKeyFetches = 64
)

// ErrKeyFetchBusy is wrapped when a key could not be fetched because too many
// other servers' keys were being fetched.
var ErrKeyFetchBusy = errors.New("too many key fetches in progress")

// OldVerifyKey is a key a server used to sign with and when it stopped.
type OldVerifyKey struct {
	// KeyID is the key's ID, algorithm included ("ed25519:old").
	KeyID string
	// Public is the public key.
	Public ed25519.PublicKey
	// ExpiredAt is when the server stopped using the key.
	ExpiredAt time.Time
}

// verifyKeyJSON and serverKeysJSON are the wire form of
// GET /_matrix/key/v2/server.
type verifyKeyJSON struct {
	Key       string `json:"key"`
	ExpiredTS *int64 `json:"expired_ts,omitempty"`
}

type serverKeysJSON struct {
	ServerName    string                   `json:"server_name"`
	VerifyKeys    map[string]verifyKeyJSON `json:"verify_keys"`
	OldVerifyKeys map[string]verifyKeyJSON `json:"old_verify_keys"`
	ValidUntilTS  *int64                   `json:"valid_until_ts"`
}

// ServerKeyResponse builds the self-signed body of
// GET /_matrix/key/v2/server for serverName: key as the current verify key,
// oldKeys as old_verify_keys, and valid_until_ts set validFor after now. The
// spec asks origin servers not to publish responses that expire within an
// hour, so a validFor shorter than that is refused.
func ServerKeyResponse(serverName string, key SigningKey, oldKeys []OldVerifyKey, validFor time.Duration, now time.Time) ([]byte, error) {
	if err := validateKeyID(key.ServerKeyID); err != nil {
		return nil, fmt.Errorf("building key response for %s: %w", serverName, err)
	}
	if len(key.Private) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("building key response for %s: signing key is not an ed25519 private key", serverName)
	}
	if validFor < time.Hour {
		return nil, fmt.Errorf("building key response for %s: validity %s is shorter than an hour", serverName, validFor)
	}
	doc := serverKeysJSON{
		ServerName:    serverName,
		VerifyKeys:    map[string]verifyKeyJSON{key.ServerKeyID: {Key: EncodeBase64(key.Public())}},
		OldVerifyKeys: make(map[string]verifyKeyJSON, len(oldKeys)),
	}
	validUntil := now.Add(validFor).UnixMilli()
	doc.ValidUntilTS = &validUntil
	for _, old := range oldKeys {
		if err := validateKeyID(old.KeyID); err != nil {
			return nil, fmt.Errorf("building key response for %s: old key: %w", serverName, err)
		}
		if old.KeyID == key.ServerKeyID {
			return nil, fmt.Errorf("building key response for %s: %s is both current and old", serverName, old.KeyID)
		}
		if len(old.Public) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("building key response for %s: old key %s is not an ed25519 public key", serverName, old.KeyID)
		}
		expired := old.ExpiredAt.UnixMilli()
		doc.OldVerifyKeys[old.KeyID] = verifyKeyJSON{Key: EncodeBase64(old.Public), ExpiredTS: &expired}
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("building key response for %s: %w", serverName, err)
	}
	signed, err := SignJSON(serverName, key.ServerKeyID, key.Private, raw)
	if err != nil {
		return nil, fmt.Errorf("building key response for %s: %w", serverName, err)
	}
	return signed, nil
}

// KeyResolver finds the public signing keys of other servers.
type KeyResolver interface {
	// PublicKey returns the key keyID of serverName if that key was valid
	// at time at. The zero time means "now" as the resolver's clock sees
	// it, which is what request authentication asks for. Errors wrap
	// ErrKeyNotFound or ErrKeyExpired when the server answered but the key
	// does not qualify.
	PublicKey(ctx context.Context, serverName, keyID string, at time.Time) (ed25519.PublicKey, error)
}

// Requester performs a federation request to a server by name and decodes
// the JSON answer into out. *Client implements it.
type Requester interface {
	Do(ctx context.Context, destination, method, path string, query url.Values, body, out any) error
}

// KeyFetcherOptions configure a KeyFetcher. Zero values select the defaults.
type KeyFetcherOptions struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives fetch failures; nothing is logged when nil.
	Logger *slog.Logger
	// MaxKeyValidity caps how far ahead of the fetch a key is trusted
	// (DefaultMaxKeyValidity).
	MaxKeyValidity time.Duration
	// RefetchInterval is the least time between two fetches of one
	// server's keys, successful or not (DefaultKeyRefetchInterval). It
	// stops a stream of requests naming unknown keys, or naming a server
	// that does not answer, from turning into a stream of fetches.
	RefetchInterval time.Duration
	// FetchTimeout bounds each fetch (DefaultKeyFetchTimeout).
	FetchTimeout time.Duration
	// CacheSize bounds the servers remembered (DefaultKeyCacheSize).
	CacheSize int
	// MaxConcurrentFetches bounds fetches of distinct servers at once
	// (DefaultMaxConcurrentKeyFetches).
	MaxConcurrentFetches int
}

// KeyFetcher is a KeyResolver that fetches keys directly from each server's
// GET /_matrix/key/v2/server (no notary servers, as the draft MSC4029 asks
// for request authentication) and caches them.
//
// A fetched response must be signed by the server with a key it lists in
// verify_keys, and name the server that was asked. Current keys are trusted
// until the lesser of valid_until_ts and MaxKeyValidity after the fetch; old
// keys are trusted for times before their expired_ts. Concurrent lookups for
// one server share a single fetch, and a server is fetched at most once per
// RefetchInterval.
//
// A KeyFetcher is safe for concurrent use.
type KeyFetcher struct {
	requester       Requester
	now             func() time.Time
	log             *slog.Logger
	maxValidity     time.Duration
	refetchInterval time.Duration
	fetchTimeout    time.Duration

	slots chan struct{}

	mu      sync.Mutex
	servers *lru[string, *serverKeyState]
}

// serverKeyState is what the fetcher knows about one server. Guarded by
// KeyFetcher.mu.
type serverKeyState struct {
	verify      map[string]cachedKey
	old         map[string]cachedOldKey
	lastAttempt time.Time
	lastErr     error
	inflight    *keyFetchCall
}

type cachedKey struct {
	pub        ed25519.PublicKey
	validUntil time.Time
}

type cachedOldKey struct {
	pub       ed25519.PublicKey
	expiredAt time.Time
}

// keyFetchCall is one fetch in progress; done is closed when it ends.
type keyFetchCall struct {
	done chan struct{}
}

// NewKeyFetcher returns a KeyFetcher that fetches through requester,
// normally a *Client.
func NewKeyFetcher(requester Requester, opts KeyFetcherOptions) *KeyFetcher {
	f := &KeyFetcher{
		requester:       requester,
		now:             opts.Now,
		log:             opts.Logger,
		maxValidity:     opts.MaxKeyValidity,
		refetchInterval: opts.RefetchInterval,
		fetchTimeout:    opts.FetchTimeout,
		servers:         newLRU[string, *serverKeyState](cmp.Or(max(opts.CacheSize, 0), DefaultKeyCacheSize)),
		slots:           make(chan struct{}, cmp.Or(max(opts.MaxConcurrentFetches, 0), DefaultMaxConcurrentKeyFetches)),
	}
	if f.now == nil {
		f.now = time.Now
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.maxValidity <= 0 {
		f.maxValidity = DefaultMaxKeyValidity
	}
	if f.refetchInterval <= 0 {
		f.refetchInterval = DefaultKeyRefetchInterval
	}
	if f.fetchTimeout <= 0 {
		f.fetchTimeout = DefaultKeyFetchTimeout
	}
	return f
}

// PublicKey implements KeyResolver.
func (f *KeyFetcher) PublicKey(ctx context.Context, serverName, keyID string, at time.Time) (ed25519.PublicKey, error) {
	if err := matrix.ValidateServerName(serverName); err != nil {
		return nil, fmt.Errorf("looking up key %s: %w", keyID, err)
	}
	if at.IsZero() {
		at = f.now()
	}
	fetched := false
	for {
		f.mu.Lock()
		st, ok := f.servers.get(serverName)
		if !ok {
			st = &serverKeyState{}
			f.servers.put(serverName, st)
		}
		if pub, err, ok := st.lookup(keyID, at); ok {
			f.mu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("looking up key %s of %s: %w", keyID, serverName, err)
			}
			return pub, nil
		}
		call := st.inflight
		if call == nil {
			now := f.now()
			if fetched || (!st.lastAttempt.IsZero() && now.Sub(st.lastAttempt) < f.refetchInterval) {
				err := st.unavailable(keyID, at)
				f.mu.Unlock()
				return nil, fmt.Errorf("looking up key %s of %s: %w", keyID, serverName, err)
			}
			select {
			case f.slots <- struct{}{}:
			default:
				f.mu.Unlock()
				return nil, fmt.Errorf("looking up key %s of %s: %w", keyID, serverName, ErrKeyFetchBusy)
			}
			call = &keyFetchCall{done: make(chan struct{})}
			st.inflight = call
			st.lastAttempt = now
			// The fetch runs on its own so that one caller giving up does
			// not fail the others waiting for it; FetchTimeout bounds it.
			// It keeps st even if the cache evicts it meanwhile.
			go f.fetch(ctx, serverName, st, call)
		}
		f.mu.Unlock()

		select {
		case <-call.done:
			fetched = true
		case <-ctx.Done():
			return nil, fmt.Errorf("fetching keys of %s: %w", serverName, ctx.Err())
		}
	}
}

// lookup answers from the cache. ok is false when a fetch might change the
// answer.
func (st *serverKeyState) lookup(keyID string, at time.Time) (pub ed25519.PublicKey, err error, ok bool) {
	if k, found := st.verify[keyID]; found && !at.After(k.validUntil) {
		return k.pub, nil, true
	}
	if k, found := st.old[keyID]; found {
		if at.Before(k.expiredAt) {
			return k.pub, nil, true
		}
		// An expired key stays expired; fetching again cannot help.
		if _, current := st.verify[keyID]; !current {
			return nil, fmt.Errorf("%w: expired at %s", ErrKeyExpired, k.expiredAt.UTC().Format(time.RFC3339)), true
		}
	}
	return nil, nil, false
}

// unavailable explains why keyID cannot be had without a fetch that is not
// allowed (or has just been done).
func (st *serverKeyState) unavailable(keyID string, at time.Time) error {
	if st.lastErr != nil {
		return fmt.Errorf("keys unavailable (last fetch failed): %w", st.lastErr)
	}
	if k, found := st.verify[keyID]; found {
		return fmt.Errorf("%w: valid only until %s, wanted at %s", ErrKeyExpired,
			k.validUntil.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	return ErrKeyNotFound
}

// fetch downloads and verifies serverName's keys and stores the outcome.
func (f *KeyFetcher) fetch(parent context.Context, serverName string, st *serverKeyState, call *keyFetchCall) {
	defer close(call.done)
	defer func() { <-f.slots }()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), f.fetchTimeout)
	defer cancel()

	var raw json.RawMessage
	err := f.requester.Do(ctx, serverName, http.MethodGet, KeyServerPath, nil, nil, &raw)
	var keys *parsedServerKeys
	if err == nil {
		keys, err = parseServerKeys(raw, serverName, f.now(), f.maxValidity)
	}
	if err != nil {
		err = fmt.Errorf("fetching server keys from %s: %w", serverName, err)
		f.log.Warn("fetching server keys failed", slog.String("server", serverName), slog.Any("error", err))
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	st.inflight = nil
	st.lastErr = err
	if err == nil {
		st.verify = keys.verify
		// Old keys accumulate: a server may stop listing a key it retired
		// long ago, but signatures made with it before then stay valid.
		if st.old == nil {
			st.old = make(map[string]cachedOldKey)
		}
		for id, k := range keys.old {
			st.old[id] = k
		}
	}
}

// parsedServerKeys is a verified key response.
type parsedServerKeys struct {
	verify map[string]cachedKey
	old    map[string]cachedOldKey
}

// parseServerKeys checks a GET /_matrix/key/v2/server response from
// serverName: it must name matrix.ServerName, list its keys well-formed, and be
// signed by serverName with at least one key from verify_keys, every such
// signature verifying. Signatures by keys with unknown algorithms are ignored.
func parseServerKeys(raw []byte, serverName string, now time.Time, maxValidity time.Duration) (*parsedServerKeys, error) {
	var doc serverKeysJSON
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("decoding key response: %w", err)
	}
	if doc.ServerName != serverName {
		return nil, fmt.Errorf("key response is for server %q, not %q", doc.ServerName, serverName)
	}
	if doc.ValidUntilTS == nil {
		return nil, errors.New("key response has no valid_until_ts")
	}
	validUntil := time.UnixMilli(*doc.ValidUntilTS)
	if limit := now.Add(maxValidity); validUntil.After(limit) {
		validUntil = limit
	}

	out := &parsedServerKeys{verify: make(map[string]cachedKey), old: make(map[string]cachedOldKey)}
	for id, k := range doc.VerifyKeys {
		pub, ok, err := decodeVerifyKey(id, k.Key)
		if err != nil {
			return nil, err
		}
		if ok {
			out.verify[id] = cachedKey{pub: pub, validUntil: validUntil}
		}
	}
	for id, k := range doc.OldVerifyKeys {
		pub, ok, err := decodeVerifyKey(id, k.Key)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if k.ExpiredTS == nil {
			return nil, fmt.Errorf("old key %s has no expired_ts", id)
		}
		out.old[id] = cachedOldKey{pub: pub, expiredAt: time.UnixMilli(*k.ExpiredTS)}
	}

	obj, err := parseSignableObject(raw)
	if err != nil {
		return nil, fmt.Errorf("key response: %w", err)
	}
	sigs, err := parseSignatures(obj["signatures"])
	if err != nil {
		return nil, fmt.Errorf("key response: %w", err)
	}
	verified := 0
	for id := range sigs[serverName] {
		if alg, _, _ := strings.Cut(id, ":"); alg != algorithmEd25519 {
			continue
		}
		k, ok := out.verify[id]
		if !ok {
			return nil, fmt.Errorf("key response is signed with %s, which it does not list in verify_keys", id)
		}
		if err := VerifyJSON(serverName, id, k.pub, raw); err != nil {
			return nil, fmt.Errorf("key response: %w", err)
		}
		verified++
	}
	if verified == 0 {
		return nil, fmt.Errorf("key response is not signed by %s with any of its verify_keys", serverName)
	}
	return out, nil
}

// decodeVerifyKey decodes one published key. ok is false for algorithms we
// do not know, which are skipped rather than failing the whole response.
func decodeVerifyKey(id, key string) (pub ed25519.PublicKey, ok bool, err error) {
	alg, version, _ := strings.Cut(id, ":")
	if alg != algorithmEd25519 {
		return nil, false, nil
	}
	if version == "" {
		return nil, false, fmt.Errorf("key ID %q has no version", id)
	}
	b, err := DecodeBase64(key)
	if err != nil {
		return nil, false, fmt.Errorf("decoding key %s: %w", id, err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, false, fmt.Errorf("key %s has %d bytes, want %d", id, len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), true, nil
}
