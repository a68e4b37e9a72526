package inbox

import (
	"encoding/json"
)

// MSC3944: dropping stale to-device messages at accept time.
//
// A few kinds of message make an earlier, still pending one stale: a
// cancellation of a key or secret request, a verification cancel, a room
// key request sent again. The accept path drops the stale ones from the
// recipient device's inbox in the accept's own transaction, under the
// device lock it already holds (DESIGN invariant 3), by position: nothing
// else moves, so a device never skips or re-reads anything else.
//
// The rules look only at plain event types; m.room.encrypted (and every
// other type) is never parsed.

// Event types MSC3944 looks at.
const (
	TypeRoomKeyRequest      = "m.room_key_request"
	TypeSecretRequest       = "m.secret.request"
	TypeVerificationRequest = "m.key.verification.request"
	TypeVerificationCancel  = "m.key.verification.cancel"
)

// Drop reasons of MSC3944 (values of the reason label of
// todeviced_messages_dropped_total).
const (
	// DropKeyRequestCancelled: an m.room_key_request and its cancellation,
	// both pending for the same device (each counts).
	DropKeyRequestCancelled = "key_request_cancelled"
	// DropKeyRequestRepeated: an m.room_key_request replaced by a newer
	// identical one.
	DropKeyRequestRepeated = "key_request_repeated"
	// DropSecretRequestCancelled: an m.secret.request and its cancellation.
	DropSecretRequestCancelled = "secret_request_cancelled"
	// DropVerificationCancelled: an m.key.verification.request and its
	// m.key.verification.cancel.
	DropVerificationCancelled = "verification_cancelled"
)

// staleReasons are the MSC3944 drop reasons, for the metric's fixed label set.
var staleReasons = []string{DropKeyRequestCancelled, DropKeyRequestRepeated, DropSecretRequestCancelled, DropVerificationCancelled,
	DropVerificationExpired, DropRequestingDeviceGone}

// StaleKey names a pending request a later message can make stale: its
// event type and its ids. Two messages match when their senders, recipient
// devices and keys are equal.
type StaleKey struct {
	Type               string
	RequestID          string
	RequestingDeviceID string
	TransactionID      string
}

// staleFields is the part of a content the rules read.
type staleFields struct {
	Action             string `json:"action"`
	RequestID          string `json:"request_id"`
	RequestingDeviceID string `json:"requesting_device_id"`
	TransactionID      string `json:"transaction_id"`
}

func parseStale(content json.RawMessage) (staleFields, bool) {
	var f staleFields
	if err := json.Unmarshal(content, &f); err != nil {
		return f, false
	}
	return f, true
}

// staleRule is what a new message of eventType does to pending ones.
type staleRule struct {
	target  string // the type of the pending messages it matches
	cancels bool   // a cancellation: both it and what it matches are dropped
	reason  string
}

// ruleOf returns the rule of a message, if it has one: cancellations, and
// room key requests (which replace an identical pending one).
func ruleOf(eventType string, content json.RawMessage) (staleRule, StaleKey, bool) {
	switch eventType {
	case TypeRoomKeyRequest, TypeSecretRequest:
		f, ok := parseStale(content)
		if !ok || f.RequestID == "" || f.RequestingDeviceID == "" {
			return staleRule{}, StaleKey{}, false
		}
		k := StaleKey{Type: eventType, RequestID: f.RequestID, RequestingDeviceID: f.RequestingDeviceID}
		switch {
		case f.Action == "request_cancellation" && eventType == TypeRoomKeyRequest:
			return staleRule{target: eventType, cancels: true, reason: DropKeyRequestCancelled}, k, true
		case f.Action == "request_cancellation":
			return staleRule{target: eventType, cancels: true, reason: DropSecretRequestCancelled}, k, true
		case f.Action == "request" && eventType == TypeRoomKeyRequest:
			return staleRule{target: eventType, reason: DropKeyRequestRepeated}, k, true
		}
	case TypeVerificationCancel:
		f, ok := parseStale(content)
		if !ok || f.TransactionID == "" {
			return staleRule{}, StaleKey{}, false
		}
		return staleRule{target: TypeVerificationRequest, cancels: true, reason: DropVerificationCancelled},
			StaleKey{Type: TypeVerificationRequest, TransactionID: f.TransactionID}, true
	}
	return staleRule{}, StaleKey{}, false
}

// pendingKey returns the key of a message a later one may make stale: a
// key or secret request (action "request") or a verification request.
func pendingKey(eventType string, content json.RawMessage) (StaleKey, bool) {
	switch eventType {
	case TypeRoomKeyRequest, TypeSecretRequest:
		f, ok := parseStale(content)
		if !ok || f.Action != "request" || f.RequestID == "" || f.RequestingDeviceID == "" {
			return StaleKey{}, false
		}
		return StaleKey{Type: eventType, RequestID: f.RequestID, RequestingDeviceID: f.RequestingDeviceID}, true
	case TypeVerificationRequest:
		f, ok := parseStale(content)
		if !ok || f.TransactionID == "" {
			return StaleKey{}, false
		}
		return StaleKey{Type: eventType, TransactionID: f.TransactionID}, true
	}
	return StaleKey{}, false
}

// mayStale reports whether a message of eventType with content has a rule:
// BuildAccept marks the sends the accept path must look at.
func mayStale(eventType string, content json.RawMessage) bool {
	switch eventType {
	case TypeRoomKeyRequest, TypeSecretRequest, TypeVerificationCancel:
		_, _, ok := ruleOf(eventType, content)
		return ok
	}
	return false
}

func markStale(eventType string, local []LocalMessage) bool {
	for _, m := range local {
		if mayStale(eventType, m.Content) {
			return true
		}
	}
	return false
}

// StaleRow is an inbox row for the stale rules: a pending one (Pos > 0) or
// one about to be written (Pos 0).
type StaleRow struct {
	UserID  string
	NID     int64
	Pos     int64
	Sender  string
	Type    string
	Content json.RawMessage
	// Unseen is true for a pending row its device cannot have been given
	// yet: one behind the device's SeenHorizon oldest pending rows.
	Unseen bool
}

// SeenHorizon is how many of a device's oldest pending rows it may have
// been given without acknowledging them yet. A sync hands out the oldest
// pending rows above its since, at most DefaultSyncLimit, and everything
// at or below that since is gone once it is used; positions only grow
// (DESIGN invariant 3), so a row handed out stays among the device's
// SeenHorizon oldest until it is acknowledged. A row behind them was never
// handed out: only then may a cancellation be dropped together with its
// request. A request the device may have seen is still deleted, but its
// cancellation is delivered, so a device never keeps a request whose
// cancellation it lost (one for a request it never saw is ignored).
const SeenHorizon = DefaultSyncLimit

// StaleTarget is one (device, sender, type) whose pending rows the accept
// path must read for PlanStale.
type StaleTarget struct {
	UserID string
	NID    int64
	Sender string
	Type   string
}

// StaleTargets returns the distinct (device, sender, type) the new rows'
// rules look at, in row order; none when no row has a rule.
func StaleTargets(rows []StaleRow) []StaleTarget {
	var out []StaleTarget
	seen := map[StaleTarget]bool{}
	for _, r := range rows {
		rule, _, ok := ruleOf(r.Type, r.Content)
		if !ok {
			continue
		}
		t := StaleTarget{UserID: r.UserID, NID: r.NID, Sender: r.Sender, Type: rule.target}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// StalePlan is what the rules do to one accept.
type StalePlan struct {
	// Delete are the pending rows to delete (UserID, NID and Pos set).
	Delete []StaleRow
	// Skip[i] is true when new row i is not written: a cancellation that
	// removed its request, or a request replaced later in the same accept.
	Skip []bool
	// Reason[i] and Dropped[i]: new row i caused Dropped[i] drops (itself
	// included) of Reason[i].
	Reason  []string
	Dropped []int
	// self[i]: new row i is a cancellation that dropped itself. A row
	// dropped by a later one of the same accept counts as written and then
	// dropped, exactly as if the two had been accepted one after the other.
	self []bool
}

// Drops returns the drops caused by new rows [from, to), by reason.
func (p *StalePlan) Drops(from, to int) map[string]int {
	var out map[string]int
	for i := from; i < to && i < len(p.Dropped); i++ {
		if p.Dropped[i] > 0 {
			if out == nil {
				out = map[string]int{}
			}
			out[p.Reason[i]] += p.Dropped[i]
		}
	}
	return out
}

// PlanStale applies the rules to the new rows, in write order, given the
// pending rows (in position order) of their targets. A cancellation drops
// every matching request pending before it, and itself if it found one and
// none of them can have been given to the device (see SeenHorizon); a room
// key request drops the identical ones pending before it. A request
// written after a cancellation is never touched by it.
func PlanStale(pending, rows []StaleRow) StalePlan {
	type matchKey struct {
		nid    int64
		sender string
		key    StaleKey
	}
	type ref struct {
		row StaleRow
		new int // index in rows, or -1 for a pending row
	}
	live := map[matchKey][]ref{}
	for _, p := range pending {
		if k, ok := pendingKey(p.Type, p.Content); ok {
			mk := matchKey{p.NID, p.Sender, k}
			live[mk] = append(live[mk], ref{row: p, new: -1})
		}
	}
	plan := StalePlan{Skip: make([]bool, len(rows)), Reason: make([]string, len(rows)), Dropped: make([]int, len(rows)), self: make([]bool, len(rows))}
	drop := func(refs []ref) {
		for _, r := range refs {
			if r.new < 0 {
				plan.Delete = append(plan.Delete, r.row)
			} else {
				plan.Skip[r.new] = true
			}
		}
	}
	for i, r := range rows {
		rule, k, ok := ruleOf(r.Type, r.Content)
		if ok {
			mk := matchKey{r.NID, r.Sender, k}
			if found := live[mk]; len(found) > 0 {
				drop(found)
				delete(live, mk)
				plan.Reason[i], plan.Dropped[i] = rule.reason, len(found)
				seen := false
				for _, f := range found {
					seen = seen || (f.new < 0 && !f.row.Unseen)
				}
				if rule.cancels && !seen {
					plan.Skip[i], plan.self[i] = true, true
					plan.Dropped[i]++
					continue
				}
			}
		}
		if k, ok := pendingKey(r.Type, r.Content); ok {
			mk := matchKey{r.NID, r.Sender, k}
			live[mk] = append(live[mk], ref{row: r, new: i})
		}
	}
	return plan
}

// countStale adds an accept's MSC3944 drops to the metric.
func (s *Service) countStale(dropped map[string]int) {
	for reason, n := range dropped {
		s.m.Dropped.WithLabelValues(reason).Add(float64(n))
	}
}

// Skipped returns how many of new rows [from, to) are cancellations that
// dropped themselves: not delivered.
func (p *StalePlan) Skipped(from, to int) int {
	n := 0
	for i := from; i < to && i < len(p.self); i++ {
		if p.self[i] {
			n++
		}
	}
	return n
}
