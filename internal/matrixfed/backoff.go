package matrixfed

import (
	"math/rand/v2"
	"time"
)

// Retry policy defaults.
const (
	// DefaultBackoffMin is the backoff ceiling after the first failure. It
	// doubles with every failure in a row.
	DefaultBackoffMin = 2 * time.Second
	// DefaultBackoffMax caps the backoff ceiling: a destination that has
	// been down for a day is still tried at least about once an hour.
	DefaultBackoffMax = time.Hour
)

// Backoff computes how long to wait after consecutive failures: exponential
// with full jitter. The ceiling is Min·2^(failures−1), capped at Max; the wait
// is uniform in (ceiling/10, ceiling], so many senders retrying one server
// spread out, and never a tight loop.
type Backoff struct {
	Min, Max time.Duration
	// Rand returns a uniform int64 in [0, n); math/rand/v2's Int64N when nil.
	Rand func(n int64) int64
}

// WithDefaults fills a zero minimum with DefaultBackoffMin and a maximum
// below the minimum with DefaultBackoffMax (or the minimum, if larger).
func (b Backoff) WithDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = DefaultBackoffMin
	}
	if b.Max < b.Min {
		b.Max = max(DefaultBackoffMax, b.Min)
	}
	return b
}

// Delay is the wait after the given number of consecutive failures (≥ 1).
func (b Backoff) Delay(failures int) time.Duration {
	ceiling := b.Max
	if failures < 1 {
		failures = 1
	}
	if shift := failures - 1; shift < 62 {
		if c := b.Min << shift; c > 0 && c < b.Max && c>>shift == b.Min {
			ceiling = c
		}
	}
	if ceiling <= 0 {
		return time.Millisecond
	}
	floor := ceiling / 10
	rnd := b.Rand
	if rnd == nil {
		rnd = rand.Int64N
	}
	return floor + time.Duration(rnd(int64(ceiling-floor))) + 1
}
