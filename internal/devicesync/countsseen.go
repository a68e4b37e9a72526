package devicesync

import (
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
)

// countsSeen remembers, per device, a fingerprint of the key counts the
// last check of a sync of that device read on this replica: what that
// sync's answer carried, when the device syncs one request after another.
// A wait starts from the counts its first check reads, so without it a
// claim or an upload that landed between a device's answer and its next
// sync's first check would be reported only with the next event, or at the
// timeout. With it, that first check ends the wait at once when the counts
// differ from the ones last handed out here. Another replica, or a device
// this one has not seen, starts from its first check, as before.
//
// Bounded: past maxCountsSeen devices it starts over, and those devices
// again start from their first check.
type countsSeen struct {
	mu sync.Mutex
	m  map[int64]uint64
}

const maxCountsSeen = 1 << 16

// swap records fp for the device and returns what was recorded before.
func (c *countsSeen) swap(nid int64, fp uint64) (prev uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, ok = c.m[nid]
	if c.m == nil || (!ok && len(c.m) >= maxCountsSeen) {
		c.m = make(map[int64]uint64)
	}
	c.m[nid] = fp
	return prev, ok
}

// countsFingerprint hashes one-time-key counts and unused fallback key
// types, in a fixed order.
// It runs on every check of a sync that reads the counts, so it keeps to
// the stack: a device has a handful of algorithms.
func countsFingerprint(otk map[string]int, fallback []string) uint64 {
	var algBuf [8]string
	algs := algBuf[:0]
	for alg := range otk {
		algs = append(algs, alg)
	}
	slices.Sort(algs)
	var buf [128]byte
	b := buf[:0]
	for _, alg := range algs {
		b = append(b, alg...)
		b = append(b, 0)
		b = strconv.AppendInt(b, int64(otk[alg]), 10)
		b = append(b, 0)
	}
	b = append(b, 1)
	for _, t := range fallback {
		b = append(b, t...)
		b = append(b, 0)
	}
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}
