package inbox

import (
	"math"
	"sync"
	"time"
)

// RateLimiter is a token bucket per key (a sending device, a sending user):
// rate tokens a second,
// at most burst saved up. It is per replica: a client spreading its requests
// over n replicas gets n times the rate, which is fine for the job (stopping
// one broken or abusive client from flooding inboxes) and needs no shared
// state.
type RateLimiter[K comparable] struct {
	rate  float64
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[K]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewRateLimiter returns a limiter of rate tokens a second, burst saved up
// (at least 1); now is the clock (nil: time.Now).
func NewRateLimiter[K comparable](rate float64, burst int, now func() time.Time) *RateLimiter[K] {
	if now == nil {
		now = time.Now
	}
	return &RateLimiter[K]{rate: rate, burst: math.Max(float64(burst), 1), now: now, buckets: map[K]*bucket{}}
}

// Allow takes a token for key, or says how long until one is available.
func (l *RateLimiter[K]) Allow(key K) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, wait
}

// Refund gives key back n tokens taken by Allow for work that then did not
// happen (a send the store refused), up to the burst.
func (l *RateLimiter[K]) Refund(key K, n int) {
	if n <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[key]; ok {
		b.tokens = math.Min(l.burst, b.tokens+float64(n))
	}
}

// sweep forgets buckets that have refilled completely (they are equal to a
// fresh one), at most once a minute, so the map stays as small as the set of
// recently active devices.
func (l *RateLimiter[K]) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Minute {
		return
	}
	l.swept = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}
