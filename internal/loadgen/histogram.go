package loadgen

import (
	"math"
	"math/bits"
	"strconv"
	"sync/atomic"
	"time"
)

// The histogram is log-linear (HDR style): every power of two is split into
// 2^subBits equal buckets, so any recorded value is known to within
// 1/2^subBits (about 3 %) whatever its magnitude, in a fixed 15 KiB.
// Values are microseconds; below 2^subBits µs every value has its own bucket.
const (
	subBits    = 5
	subBuckets = 1 << subBits
	// maxExp bounds the recorded range to 2^maxExp µs (about 12 days);
	// anything larger lands in the last bucket.
	maxExp     = 40
	numBuckets = (maxExp - subBits + 1) * subBuckets
)

// Histogram records durations concurrently without locks: syncers record
// every message latency on the hot path, so it is a fixed array of atomic
// counters rather than a slice of samples that would grow with the run.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	max    atomic.Uint64
}

func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - 1 - subBits
	idx := (shift+1)<<subBits + int(v>>uint(shift)) - subBuckets
	return min(idx, numBuckets-1)
}

// bucketHigh is the largest value that falls into bucket idx.
func bucketHigh(idx int) uint64 {
	if idx < subBuckets {
		return uint64(idx)
	}
	shift := idx>>subBits - 1
	mantissa := uint64(idx&(subBuckets-1)) + subBuckets
	return (mantissa+1)<<uint(shift) - 1
}

// Record adds one duration. Negative durations (clock steps) count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d.Microseconds(), 0))
	h.counts[bucketOf(v)].Add(1)
	h.total.Add(1)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Snapshot copies the current counts. It is consistent enough for progress
// output while recording goes on, and exact once recording has stopped.
func (h *Histogram) Snapshot() *HistSnapshot {
	s := &HistSnapshot{Max: h.max.Load()}
	for i := range h.counts {
		c := h.counts[i].Load()
		s.Counts[i] = c
		s.Total += c
	}
	return s
}

// HistSnapshot is a frozen histogram; Sub of two snapshots is the histogram
// of what was recorded in between (per-second CSV samples).
type HistSnapshot struct {
	Counts [numBuckets]uint64
	Total  uint64
	// Max is the largest value in µs. For a difference it is the upper bound
	// of the highest non-empty bucket, capped by the later snapshot's Max.
	Max uint64
}

// Sub returns s minus an earlier snapshot of the same histogram.
func (s *HistSnapshot) Sub(prev *HistSnapshot) *HistSnapshot {
	d := &HistSnapshot{}
	top := -1
	for i := range s.Counts {
		d.Counts[i] = s.Counts[i] - prev.Counts[i]
		d.Total += d.Counts[i]
		if d.Counts[i] > 0 {
			top = i
		}
	}
	if top >= 0 {
		d.Max = min(bucketHigh(top), s.Max)
	}
	return d
}

// Quantile returns the value at quantile q (0..1) as a duration: the upper
// bound of the bucket holding it, capped by the maximum, so it never
// understates a latency. It returns 0 for an empty histogram.
func (s *HistSnapshot) Quantile(q float64) time.Duration {
	if s.Total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.Total)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range s.Counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketHigh(i), s.Max)) * time.Microsecond
		}
	}
	return time.Duration(s.Max) * time.Microsecond
}

// MaxDuration is the largest recorded value.
func (s *HistSnapshot) MaxDuration() time.Duration { return time.Duration(s.Max) * time.Microsecond }

// Summary returns the percentiles the report prints.
func (s *HistSnapshot) Summary() LatencySummary {
	return LatencySummary{
		Count: s.Total,
		P50:   Millis(s.Quantile(0.50)),
		P95:   Millis(s.Quantile(0.95)),
		P99:   Millis(s.Quantile(0.99)),
		Max:   Millis(s.MaxDuration()),
	}
}

// LatencySummary is a latency distribution in milliseconds.
type LatencySummary struct {
	Count uint64 `json:"count"`
	P50   Millis `json:"p50_ms"`
	P95   Millis `json:"p95_ms"`
	P99   Millis `json:"p99_ms"`
	Max   Millis `json:"max_ms"`
}

// Millis is a duration that marshals as fractional milliseconds, the unit
// people read latencies in.
type Millis time.Duration

// MarshalJSON writes the duration in milliseconds with microsecond precision.
func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(formatMillis(time.Duration(m))), nil
}

// String is the duration in milliseconds.
func (m Millis) String() string { return formatMillis(time.Duration(m)) }

func formatMillis(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return fmtFloat(ms, 0)
	case ms >= 10:
		return fmtFloat(ms, 1)
	default:
		return fmtFloat(ms, 2)
	}
}

func fmtFloat(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
