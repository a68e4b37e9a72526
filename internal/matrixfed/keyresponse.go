package matrixfed

import (
	"sync"
	"time"
)

// KeyResponseValidity is how long the key response a KeyResponseCache
// serves is valid (its valid_until_ts); it is signed again when half of that
// has passed, so other servers never hold an expired copy.
const KeyResponseValidity = 24 * time.Hour

// KeyResponseCache serves the self-signed body of GET /_matrix/key/v2/server,
// signing it again only when half its validity has passed: every request for
// our keys would otherwise cost a canonical-JSON encoding and a signature. It
// is safe for concurrent use.
type KeyResponseCache struct {
	name string
	key  SigningKey
	now  func() time.Time

	mu    sync.Mutex
	body  []byte
	fresh time.Time // signed again from then on
}

// NewKeyResponseCache returns the cache of serverName's response for key.
func NewKeyResponseCache(serverName string, key SigningKey) *KeyResponseCache {
	return &KeyResponseCache{name: serverName, key: key, now: time.Now}
}

// Response returns the current body, signed again when stale.
func (k *KeyResponseCache) Response() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if k.body != nil && now.Before(k.fresh) {
		return k.body, nil
	}
	body, err := ServerKeyResponse(k.name, k.key, nil, KeyResponseValidity, now)
	if err != nil {
		return nil, err
	}
	k.body, k.fresh = body, now.Add(KeyResponseValidity/2)
	return body, nil
}
