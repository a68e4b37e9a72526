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
func countsFingerprint(otk map[string]int, fallback []string) uint64 {
	h := fnv.New64a()
	algs := make([]string, 0, len(otk))
	for alg := range otk {
		algs = append(algs, alg)
	}
	slices.Sort(algs)
	for _, alg := range algs {
		h.Write([]byte(alg))
		h.Write([]byte{0})
		h.Write(strconv.AppendInt(nil, int64(otk[alg]), 10))
		h.Write([]byte{0})
	}
	h.Write([]byte{1})
	for _, t := range fallback {
		h.Write([]byte(t))
		h.Write([]byte{0})
	}
	return h.Sum64()
}
