package inbox

import "encoding/json"

// Recipients are the live devices a send addresses, as the accept path
// found (and, on PostgreSQL, locked) them: the input of Expand. Add them in
// nid order.
type Recipients struct {
	found map[recipientKey]int64
	// added is every device in the order added (nid order); byUser, the
	// same by user for "*", is built from it by the first "*" Expand
	// meets. Most sends address devices by id, and building byUser as
	// devices were added cost a slice per user (and its growth) that only
	// a "*" reads.
	added  []recipientNID
	byUser map[string][]int64 // in nid order
}

type recipientKey struct{ user, device string }

type recipientNID struct {
	user string
	nid  int64
}

// NewRecipients returns an empty set of recipients with room for n devices
// (for at least a small fan-out's when n is 0: not known in advance).
func NewRecipients(n int) *Recipients {
	return &Recipients{found: make(map[recipientKey]int64, n), added: make([]recipientNID, 0, max(n, 8))}
}

// Add records a live device; devices are added in nid order.
func (r *Recipients) Add(nid int64, userID, deviceID string) {
	r.found[recipientKey{userID, deviceID}] = nid
	r.added = append(r.added, recipientNID{userID, nid})
	r.byUser = nil // rebuilt with this device by the next "*"
}

// userNIDs returns the devices of userID, in nid order.
func (r *Recipients) userNIDs(userID string) []int64 {
	if r.byUser == nil {
		r.byUser = map[string][]int64{}
		for _, a := range r.added {
			r.byUser[a.user] = append(r.byUser[a.user], a.nid)
		}
	}
	return r.byUser[userID]
}

// Expand turns messages into inbox rows (DESIGN invariant 6): in message
// order, a message to AllDevices to every live device of its user at accept
// time, in nid order; add gets each row. It returns how many messages found
// no device (a "*" to a user without devices counts once).
func (r *Recipients) Expand(msgs []LocalMessage, add func(userID string, nid int64, content json.RawMessage)) (unknown int) {
	if r == nil {
		return len(msgs) // no devices found
	}
	for _, m := range msgs {
		if m.DeviceID == AllDevices {
			nids := r.userNIDs(m.UserID)
			if len(nids) == 0 {
				unknown++
			}
			for _, nid := range nids {
				add(m.UserID, nid, m.Content)
			}
			continue
		}
		if nid, ok := r.found[recipientKey{m.UserID, m.DeviceID}]; ok {
			add(m.UserID, nid, m.Content)
		} else {
			unknown++
		}
	}
	return unknown
}
