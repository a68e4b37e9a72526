package devicelists

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Upstream authentication: for deployments where the homeserver (or an OIDC
// provider behind it) owns access tokens, todeviced asks the homeserver's
// whoami who a token belongs to. Answers are cached briefly, so a busy client
// costs one whoami every few seconds and a logout takes effect within
// UpstreamCacheTTL.
const (
	// UpstreamCacheTTL is how long a whoami answer is trusted.
	UpstreamCacheTTL = 5 * time.Second
	// upstreamNegativeTTL is how long a refused token stays refused without
	// asking again: short, but long enough that a client retrying a bad token
	// in a loop cannot turn into a whoami flood.
	upstreamNegativeTTL = time.Second
	upstreamTimeout     = 10 * time.Second
	// upstreamCacheMax bounds the cache; past it, expired entries are swept.
	upstreamCacheMax = 100_000
)

// Upstream verifies tokens with a homeserver's
// GET /_matrix/client/v3/account/whoami.
type Upstream struct {
	base   string
	client *http.Client
	now    func() time.Time

	mu    sync.Mutex
	cache map[string]upstreamEntry
}

type upstreamEntry struct {
	userID, deviceID string
	ok               bool
	until            time.Time
}

// NewUpstream returns an authenticator asking the homeserver at baseURL
// (for example https://matrix.example.org). client and now may be nil.
func NewUpstream(baseURL string, client *http.Client, now func() time.Time) *Upstream {
	if client == nil {
		client = &http.Client{Timeout: upstreamTimeout}
	}
	if now == nil {
		now = time.Now
	}
	return &Upstream{base: strings.TrimRight(baseURL, "/"), client: client, now: now, cache: map[string]upstreamEntry{}}
}

// errUpstreamRefused means the homeserver does not know the token.
var errUpstreamRefused = errors.New("the homeserver refused the token")

// Whoami returns the user and device a token belongs to.
func (u *Upstream) Whoami(ctx context.Context, token string) (userID, deviceID string, err error) {
	key := hex.EncodeToString(HashToken(token)) // never keep tokens themselves
	now := u.now()
	u.mu.Lock()
	e, hit := u.cache[key]
	u.mu.Unlock()
	if hit && now.Before(e.until) {
		if !e.ok {
			return "", "", errUpstreamRefused
		}
		return e.userID, e.deviceID, nil
	}
	userID, deviceID, err = u.ask(ctx, token)
	switch {
	case errors.Is(err, errUpstreamRefused):
		u.store(key, upstreamEntry{until: now.Add(upstreamNegativeTTL)}, now)
	case err == nil:
		u.store(key, upstreamEntry{userID: userID, deviceID: deviceID, ok: true, until: now.Add(UpstreamCacheTTL)}, now)
	}
	return userID, deviceID, err
}

func (u *Upstream) store(key string, e upstreamEntry, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.cache) >= upstreamCacheMax {
		for k, v := range u.cache {
			if !now.Before(v.until) {
				delete(u.cache, k)
			}
		}
		if len(u.cache) >= upstreamCacheMax {
			clear(u.cache)
		}
	}
	u.cache[key] = e
}

func (u *Upstream) ask(ctx context.Context, token string) (string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.base+"/_matrix/client/v3/account/whoami", nil)
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := u.client.Do(req)
	if err != nil {
		return "", "", fmt.Errorf("asking the homeserver's whoami: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", "", fmt.Errorf("reading the homeserver's whoami: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return "", "", errUpstreamRefused
	case resp.StatusCode != http.StatusOK:
		return "", "", fmt.Errorf("the homeserver's whoami answered %d", resp.StatusCode)
	}
	var who struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
		IsGuest  bool   `json:"is_guest"`
	}
	if err := json.Unmarshal(body, &who); err != nil || who.UserID == "" {
		return "", "", fmt.Errorf("the homeserver's whoami answered %q", body)
	}
	if who.DeviceID == "" {
		// An appservice or admin token with no device cannot hold an inbox.
		return "", "", errUpstreamRefused
	}
	return who.UserID, who.DeviceID, nil
}

// SetUpstream makes Authenticate fall back to the homeserver for tokens
// todeviced does not hold itself.
func (r *Service) SetUpstream(u *Upstream) { r.upstream = u }

// authenticateUpstream asks the homeserver and makes sure the device exists
// locally, creating it on first sight: a homeserver that owns its tokens need
// not also tell todeviced about every device before it can receive messages.
func (r *Service) authenticateUpstream(ctx context.Context, token string) (Device, error) {
	userID, deviceID, err := r.upstream.Whoami(ctx, token)
	if errors.Is(err, errUpstreamRefused) {
		return Device{}, ErrNotFound
	}
	if err != nil {
		r.log.WarnContext(ctx, "cannot verify a token with the homeserver", "err", err)
		return Device{}, matrix.Errorf(matrix.Unavailable, "Cannot verify the access token right now.")
	}
	if uid, err := matrix.ParseUserID(userID); err != nil || uid.Server != r.serverName {
		r.log.WarnContext(ctx, "the homeserver's whoami named a user not of this server", "user_id", userID)
		return Device{}, ErrNotFound
	}
	d, err := r.store.Device(ctx, userID, deviceID)
	if errors.Is(err, ErrNotFound) {
		d, _, err = r.PutDevice(ctx, userID, deviceID, "", nil, nil)
	}
	if err != nil {
		return Device{}, fmt.Errorf("looking up the device of an upstream token: %w", err)
	}
	return d, nil
}
