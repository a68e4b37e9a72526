package devicelists

import (
	"container/list"
	"crypto/sha256"
	"sync"
)

// TokenCacheSize bounds the cache of authenticated tokens: an entry is a
// token hash and a device, about 250 bytes with its list and map
// bookkeeping and typical ids, so a full cache holds about 16 MB.
const TokenCacheSize = 1 << 16

// Auth is a request's access token, authenticated.
type Auth struct {
	Device
	// Guard is the token's hash when todeviced holds the token itself: a
	// store can then check, in a sync's own round trip, that the token
	// still names Device (inbox.SyncQuery.TokenHash). Nil for a token the
	// homeserver vouched for (upstream authentication): no row of ours
	// holds its hash, so nothing could check it.
	Guard []byte
	// Unverified says Device was taken from the cache of earlier
	// authentications without a database read: the token may since have
	// been revoked, and only what the guard protects may be done with it.
	Unverified bool
}

// tokenCache remembers the device each recently authenticated token named,
// so /sync can start without a round trip of its own for the token (DESIGN
// invariant 9: the sync's guard makes a revoked token do nothing). Entries
// are never trusted alone, so none needs to expire or be told of a
// revocation on another replica; a failed guard forgets its entry. Bounded:
// adding beyond the bound drops the least recently used entry. Safe for
// concurrent use.
type tokenCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *tokenEntry, front: most recently used
	items map[[sha256.Size]byte]*list.Element
}

type tokenEntry struct {
	hash [sha256.Size]byte
	dev  Device
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, order: list.New(), items: make(map[[sha256.Size]byte]*list.Element)}
}

// key is a token hash as a map key; false for anything not a SHA-256.
func key(hash []byte) ([sha256.Size]byte, bool) {
	if len(hash) != sha256.Size {
		return [sha256.Size]byte{}, false
	}
	return [sha256.Size]byte(hash), true
}

func (c *tokenCache) get(hash []byte) (Device, bool) {
	k, ok := key(hash)
	if !ok {
		return Device{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return Device{}, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*tokenEntry).dev, true
}

func (c *tokenCache) put(hash []byte, dev Device) {
	k, ok := key(hash)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value.(*tokenEntry).dev = dev
		c.order.MoveToFront(e)
		return
	}
	c.items[k] = c.order.PushFront(&tokenEntry{hash: k, dev: dev})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*tokenEntry).hash)
	}
}

func (c *tokenCache) forget(hash []byte) {
	k, ok := key(hash)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.order.Remove(e)
		delete(c.items, k)
	}
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
