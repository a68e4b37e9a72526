package server

import (
	"context"
	"runtime"
	"runtime/metrics"
	"time"
)

// Heap trimming: a collection after a burst, once the process is quiet.
//
// Go sets the next collection's goal at twice the heap that the last one
// found live, and gives memory back to the system only down to about that
// goal. A burst — 10 000 clients connecting at once, each request read
// into net/http's buffers before its long-poll is parked — ends with a
// collection in the middle of it, and then the process goes quiet: an idle
// server allocates slowly, so the next collection is minutes away (Go's
// own forced one comes after two), and until then it holds the burst's
// garbage and the headroom above it (measured: 177–181 MB resident for
// 10 000 parked long-polls with 47 MB live; 108 MB right after one
// collection). trimHeap runs that collection early: when no collection has
// run for heapTrimQuiet and the heap the process holds is more than twice
// what the last one found live (and more than heapTrimFloor), it calls
// runtime.GC, whose new goal lets the scavenger return the rest. A busy
// process collects on its own and is never trimmed; a quiet one pays one
// collection of its live heap (tens of milliseconds of one core for
// 10 000 long-polls) after each burst.
const (
	heapTrimEvery = 5 * time.Second
	heapTrimQuiet = 10 * time.Second
	heapTrimFloor = 64 << 20
)

// heapSample is what trimHeap reads of the runtime.
type heapSample struct {
	cycles uint64 // collections completed
	live   uint64 // heap found live by the last collection
	held   uint64 // heap memory held from the system: in use, or free but not returned
}

var heapMetrics = []metrics.Sample{
	{Name: "/gc/cycles/total:gc-cycles"},
	{Name: "/gc/heap/live:bytes"},
	{Name: "/memory/classes/heap/objects:bytes"},
	{Name: "/memory/classes/heap/unused:bytes"},
	{Name: "/memory/classes/heap/free:bytes"},
}

func readHeap() heapSample {
	s := make([]metrics.Sample, len(heapMetrics))
	copy(s, heapMetrics)
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return heapSample{cycles: v(0), live: v(1), held: v(2) + v(3) + v(4)}
}

// heapTrimmer decides, from one sample every heapTrimEvery, when to trim.
type heapTrimmer struct {
	cycles    uint64
	quietFrom time.Time
}

// trim reports whether to collect now.
func (t *heapTrimmer) trim(now time.Time, h heapSample) bool {
	if h.cycles != t.cycles || t.quietFrom.IsZero() {
		t.cycles, t.quietFrom = h.cycles, now
		return false
	}
	if now.Sub(t.quietFrom) < heapTrimQuiet || h.held < heapTrimFloor || h.held < 2*h.live {
		return false
	}
	// The collection about to run resets the quiet time.
	t.quietFrom = time.Time{}
	return true
}

// trimHeap runs until ctx ends (a background job of Start).
func (s *Server) trimHeap(ctx context.Context) {
	var t heapTrimmer
	tick := time.NewTicker(heapTrimEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if t.trim(now, readHeap()) {
				runtime.GC()
				s.m.heapTrims.Inc()
			}
		}
	}
}
