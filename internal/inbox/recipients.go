package inbox

import "encoding/json"

// Recipients are the live devices a send addresses, as the accept path
// found (and, on PostgreSQL, locked) them: the input of Expand. Add them in
// nid order.
type Recipients struct {
	found  map[recipientKey]int64
	byUser map[string][]int64 // in nid order
}

type recipientKey struct{ user, device string }

// NewRecipients returns an empty set of recipients with room for n devices.
func NewRecipients(n int) *Recipients {
	return &Recipients{found: make(map[recipientKey]int64, n), byUser: map[string][]int64{}}
}

// Add records a live device; devices are added in nid order.
func (r *Recipients) Add(nid int64, userID, deviceID string) {
	r.found[recipientKey{userID, deviceID}] = nid
	r.byUser[userID] = append(r.byUser[userID], nid)
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
			nids := r.byUser[m.UserID]
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
