package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The trimmer collects only a quiet process (no collection for
// heapTrimQuiet) that holds over twice its last live heap and over
// heapTrimFloor, and then not again until it has been quiet once more.
func TestHeapTrimmer(t *testing.T) {
	var tr heapTrimmer
	t0 := time.Unix(1000, 0)
	at := func(s time.Duration) time.Time { return t0.Add(s) }
	burst := heapSample{cycles: 7, live: 60 << 20, held: 180 << 20}

	require.False(t, tr.trim(at(0), burst), "first sample: quiet since now")
	require.False(t, tr.trim(at(5*time.Second), burst), "not quiet long enough")
	require.True(t, tr.trim(at(10*time.Second), burst), "quiet, holding 3× the live heap")
	require.False(t, tr.trim(at(15*time.Second), burst), "the trim's own collection starts a new quiet time")
	after := heapSample{cycles: 8, live: 47 << 20, held: 80 << 20}
	require.False(t, tr.trim(at(20*time.Second), after))
	require.False(t, tr.trim(at(60*time.Second), after), "holding under twice the live heap")

	busy := heapSample{cycles: 9, live: 60 << 20, held: 180 << 20}
	for i := range 10 {
		busy.cycles++
		require.False(t, tr.trim(at(time.Duration(70+5*i)*time.Second), busy), "collecting on its own")
	}
	small := heapSample{cycles: busy.cycles, live: 10 << 20, held: 50 << 20}
	require.False(t, tr.trim(at(200*time.Second), small))
	require.False(t, tr.trim(at(300*time.Second), small), "under the floor")

	h := readHeap()
	require.NotZero(t, h.cycles+h.held, "the runtime's metrics are read")
	require.NotZero(t, h.held)
}
