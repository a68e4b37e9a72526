package devicesync

import (
	"bytes"
	"slices"
	"sync"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// quietDevices lets a long-poll skip its first look at the store when
// nothing can have changed for its device since this replica answered the
// since it brings.
//
// A client syncs one request after another: the answer that hands out T is
// followed at once by a sync with since=T, whose first check acknowledges
// what T covers and, almost always, finds nothing new and waits. Every
// message delivered to a long-polling device so cost two checks, the one
// that found nothing and the one after the wake-up. But everything a check
// reports has a wake-up: a message committed for the device, the device
// deleted or its token replaced, a one-time-key claim or upload (its device
// key), a device-list change its user must hear of (its user key). So when
// this replica has heard no wake-up of either key since before the check
// that made T, a check now would find nothing that is not also on its way
// as a wake-up, and the sync waits without one: its first check is the
// first wake-up's, or, if none comes, one at the end (sync.go, final), so a
// since is always acknowledged and every answer comes from a check.
//
// A device is quiet for exactly one (since, token, shape): the state the
// last answer of its sync here handed out. It stops being quiet on any
// wake-up of its keys (the hub's observer), on WakeAll (a reconnected
// listener: anything may have been missed), and never starts while the hub
// is deaf. Each check arms the device before it reads the store; its
// answer settles the device quiet only if no wake-up came since, so a
// commit racing the check leaves it unquiet. Bounded: past maxQuiet
// devices new ones are not remembered and sync as before.
type quietDevices struct {
	hub *wakeup.Hub

	mu     sync.Mutex
	seq    uint64
	device map[wakeup.Key]*quietDevice
	user   map[wakeup.Key][]wakeup.Key // user key → device keys in device
}

const maxQuiet = 1 << 16

type quietDevice struct {
	user wakeup.Key
	// armed is the ticket of the latest check that may settle the device.
	armed uint64
	// settled says at holds: the answer of armed's check was handed out
	// and no wake-up has come since before that check.
	settled bool
	at      quietAt
}

// quietAt is what a sync must bring to be answered from an unchanged
// store: the positions and the token of an answer, and its request's
// shape.
type quietAt struct {
	toDevice  inbox.Position
	listsHead int64
	keyCounts bool
	// listsOnly: the answer read no inbox (a sliding-sync connection with
	// the e2ee extension alone); its toDevice says nothing of the inbox.
	listsOnly bool
	token     []byte
}

func newQuietDevices(hub *wakeup.Hub) *quietDevices {
	q := &quietDevices{hub: hub, device: make(map[wakeup.Key]*quietDevice), user: make(map[wakeup.Key][]wakeup.Key)}
	hub.Observe(q.woken)
	return q
}

// woken is the hub's observer: it runs with the hub locked, before the
// waiters are signalled (wakeup.Hub.Wake), so a sync woken by this wake-up
// arms its device only after the device was forgotten here, and one that
// registers after it finds its device unquiet.
func (q *quietDevices) woken(keys []wakeup.Key) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if keys == nil {
		clear(q.device)
		clear(q.user)
		return
	}
	for _, k := range keys {
		if len(k) == 0 {
			continue
		}
		switch k[0] {
		case 'd':
			if d := q.device[k]; d != nil {
				delete(q.device, k)
				ds := slices.DeleteFunc(q.user[d.user], func(x wakeup.Key) bool { return x == k })
				if len(ds) == 0 {
					delete(q.user, d.user)
				} else {
					q.user[d.user] = ds
				}
			}
		case 'u':
			for _, d := range q.user[k] {
				delete(q.device, d)
			}
			delete(q.user, k)
		}
	}
}

// arm is called before a check reads the store; the ticket it returns
// settles the device (settle) if no wake-up of its keys comes first. 0 is
// no ticket: the hub is deaf, or too many devices are remembered.
func (q *quietDevices) arm(device, user wakeup.Key) uint64 {
	if q.hub.Deaf() {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	d := q.device[device]
	if d == nil {
		if len(q.device) >= maxQuiet {
			return 0
		}
		d = &quietDevice{user: user}
		q.device[device] = d
		if ds := q.user[user]; !slices.Contains(ds, device) {
			q.user[user] = append(ds, device)
		}
	}
	q.seq++
	d.armed, d.settled = q.seq, false
	return q.seq
}

// settle marks the device quiet at at, if ticket is still its latest and
// nothing woke it since.
func (q *quietDevices) settle(device wakeup.Key, ticket uint64, at quietAt) {
	if ticket == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if d := q.device[device]; d != nil && d.armed == ticket {
		d.settled, d.at = true, at
	}
}

// quiet says whether req may skip its first check: it brings the
// positions of the device's settled answer (a device-list since at that
// answer's head, or none), with the same token (or one this request has
// just read, TokenHash nil), the same ask for key counts and the same
// reading of the inbox or not. req must
// already be registered with the hub.
func (q *quietDevices) quiet(device wakeup.Key, req *Request) bool {
	if q.hub.Deaf() {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	d := q.device[device]
	return d != nil && d.settled && d.at.toDevice == req.ToDevice &&
		(req.Lists == ListsSince{} || req.Lists == ListsAt(d.at.listsHead)) &&
		d.at.keyCounts == req.KeyCounts && d.at.listsOnly == req.ListsOnly &&
		(req.TokenHash == nil || bytes.Equal(d.at.token, req.TokenHash))
}
