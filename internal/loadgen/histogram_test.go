package loadgen

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBucketsAreContiguous(t *testing.T) {
	// Every bucket's range starts right after the previous one's.
	for idx := 1; idx < numBuckets; idx++ {
		lo := bucketHigh(idx-1) + 1
		require.Equal(t, idx, bucketOf(lo), "first value of bucket %d", idx)
		require.Equal(t, idx, bucketOf(bucketHigh(idx)), "last value of bucket %d", idx)
	}
}

func TestQuantilesWithinBucketError(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var exact []time.Duration
	for range 100_000 {
		// Log-uniform from 10 µs to 10 s.
		d := time.Duration(10e3 * pow10(rng.Float64()*6))
		h.Record(d)
		exact = append(exact, d.Truncate(time.Microsecond))
	}
	slices.Sort(exact)
	s := h.Snapshot()
	assert.Equal(t, uint64(len(exact)), s.Total)
	for _, q := range []float64{0.5, 0.95, 0.99, 1} {
		want := exact[int(q*float64(len(exact)))-1]
		got := s.Quantile(q)
		assert.GreaterOrEqual(t, got, want, "q=%v never understates", q)
		assert.LessOrEqual(t, float64(got), float64(want)*(1+1.0/subBuckets)+1e3, "q=%v within one bucket", q)
	}
	assert.Equal(t, exact[len(exact)-1], s.MaxDuration())
}

func pow10(x float64) float64 {
	r := 1.0
	for ; x >= 1; x-- {
		r *= 10
	}
	// Good enough for spreading test values: linear between powers.
	return r * (1 + 9*x)
}

func TestSnapshotDifference(t *testing.T) {
	var h Histogram
	h.Record(time.Millisecond)
	before := h.Snapshot()
	h.Record(3 * time.Millisecond)
	h.Record(5 * time.Millisecond)
	d := h.Snapshot().Sub(before)
	assert.Equal(t, uint64(2), d.Total)
	assert.InDelta(t, float64(3*time.Millisecond), float64(d.Quantile(0.5)), float64(time.Millisecond)/subBuckets*4)
	assert.Equal(t, 5*time.Millisecond, d.MaxDuration())
	assert.Zero(t, (&HistSnapshot{}).Quantile(0.5))
}

func TestMillisJSON(t *testing.T) {
	b, err := json.Marshal(map[string]Millis{"a": Millis(1500 * time.Microsecond), "b": Millis(250 * time.Millisecond)})
	require.NoError(t, err)
	assert.JSONEq(t, `{"a":1.5,"b":250}`, string(b))
}
