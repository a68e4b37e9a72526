package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Poison handling (DESIGN invariant 13): one EDU a destination can never take
// must delay only itself, not everything queued behind it for the TTL.
//
//   - A transaction of several EDUs answered with the same splittable status
//     (see splittable) SplitAfter times in a row is split: it is replaced,
//     atomically, by a transaction with a new id holding the first half of
//     what is queued (the other EDUs return to the queue, unchanged, with
//     their message ids), and the destination's transactions stay that small
//     until one succeeds, then grow back, doubling per success. Bisecting
//     so, a poison EDU ends up alone in a transaction after about log2(100)
//     rounds, while the EDUs before it are delivered.
//   - An EDU alone that keeps failing with the same 4xx is dropped after
//     RejectAfter attempts ("rejected"), as before: a 4xx is the
//     destination's verdict on it.
//   - An EDU alone that keeps failing with the same 5xx may be poison, or
//     the destination may be failing everything. It is set aside (at most
//     MaxSetAside per destination): the EDUs after it are sent first. Once
//     the destination takes one of those, each EDU set aside is sent alone
//     once more; failing again with the same status then proves it is the
//     EDU, and it is dropped ("poison"); otherwise it is retried as usual.
//     When MaxSetAside are set aside the destination counts as down and its
//     transactions are retried without further splitting.
//
// Everything else keeps its order: only EDUs set aside overtake, or are
// overtaken by, others. The state is kept in memory per destination: after
// a restart (or when the lease moves to another replica) the stored
// transaction is simply resent and, if it keeps failing, split again. The
// message TTL bounds all of it: a split transaction keeps the age of the
// one it replaced, and EDUs back in the queue expire by their own.
const (
	// SplitAfter is how many times in a row a transaction must fail with
	// the same splittable status before it is split.
	SplitAfter = 3
	// MaxSetAside bounds the EDUs a destination has set aside at once.
	MaxSetAside = 8
)

// splittable reports whether a status, repeated, says something about the
// transaction's content rather than the destination's health: 500 and the
// other 5xx except the gateway and availability ones (502, 503, 504), and the
// 4xx that count as rejections. No answer at all, 401, 408 and 429 never
// split anything.
func splittable(status int) bool {
	return serverFault(status) || countsAsRejection(status)
}

func serverFault(status int) bool {
	switch status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return false
	}
	return status >= 500 && status <= 599
}

// splitState is a destination's poison handling state, used only by its
// sender goroutine.
type splitState struct {
	// limit is the most EDUs per transaction while a split is being
	// worked through; 0 means MaxEDUsPerTxn.
	limit int
	// base is the failure count at the last split or set-aside: the
	// backoff restarts from there, since the transaction changed.
	base int
	// aside are EDUs set aside, oldest first, with the status they failed
	// with.
	aside []asideEDU
	// confirm: the destination took a transaction since the first EDU
	// was set aside; confirmID is the transaction that sends it alone.
	confirm   bool
	confirmID string
}

type asideEDU struct {
	item   TxnItem
	status int
}

func (sp *splitState) room() int {
	if sp.limit <= 0 {
		return MaxEDUsPerTxn
	}
	return sp.limit
}

func (sp *splitState) isAside(it TxnItem) bool {
	return slices.ContainsFunc(sp.aside, func(a asideEDU) bool { return a.item == it })
}

func (sp *splitState) idle() bool { return sp.limit == 0 && len(sp.aside) == 0 }

// succeeded notes that the destination took transaction id.
func (sp *splitState) succeeded(id string) {
	if id != "" && id == sp.confirmID {
		sp.aside = sp.aside[1:]
		sp.confirmID = ""
	} else if len(sp.aside) > 0 {
		sp.confirm = true
	}
	if len(sp.aside) == 0 {
		sp.confirm = false
	}
	if sp.limit > 0 {
		if sp.limit *= 2; sp.limit >= MaxEDUsPerTxn {
			sp.limit = 0
		}
	}
}

// splitFor returns the poison handling state of destination d.
func (s *Sender) splitFor(d string) *splitState {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.splits[d]
	if sp == nil {
		sp = &splitState{}
		s.splits[d] = sp
	}
	return sp
}

// forgetSplit drops d's state once there is nothing in it.
func (s *Sender) forgetSplit(d string, sp *splitState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp.idle() && s.splits[d] == sp {
		delete(s.splits, d)
	}
}

// composeTxn builds (without storing) a transaction of at most room queued
// EDUs that keep accepts. EDUs canonical JSON cannot carry are returned in
// bad instead.
func (s *Sender) composeTxn(ctx context.Context, l Lease, room int, sp *splitState, keep func(TxnItem) bool) (t *StoredTxn, types map[string]int, bad []TxnItem, err error) {
	skip := sp.isAside
	skipped := len(sp.aside)
	if keep != nil {
		skip = func(it TxnItem) bool { return !keep(it) }
	}
	batch, err := buildBatch(ctx, l.Destination, s.cfg.Sources, room, skip, skipped)
	if err != nil || len(batch) == 0 {
		return nil, nil, nil, err
	}
	t = &StoredTxn{Destination: l.Destination, ID: s.ids.next(), OriginServerTS: s.cfg.Now().UnixMilli()}
	types = map[string]int{}
	var edus []json.RawMessage
	for _, e := range batch {
		item := TxnItem{Source: e.source, Pos: e.Pos}
		// The signature covers the canonical form of the whole body:
		// one EDU that has none (a float in a client's content) would
		// make every attempt fail and hold up the destination forever.
		if _, err := matrix.CanonicalJSON(e.EDU); err != nil {
			bad = append(bad, item)
			continue
		}
		edus = append(edus, e.EDU)
		t.Items = append(t.Items, item)
		types[e.Type]++
	}
	if len(edus) == 0 {
		return nil, nil, bad, nil
	}
	t.EDUs = encodeEDUList(edus)
	return t, types, bad, nil
}

// replaceStored replaces the stored transaction old by a smaller one of at
// most room queued EDUs (leaving EDUs set aside out), or by nothing when none
// is left.
func (s *Sender) replaceStored(ctx context.Context, l Lease, old *StoredTxn, room int, sp *splitState) error {
	t, _, _, err := s.composeTxn(ctx, l, room, sp, nil)
	if err != nil {
		return err
	}
	return s.cfg.Store.ReplaceTxn(ctx, l, old.ID, t)
}

// replaces reports whether a transaction that failed with status for the
// same-th time in a row is now split, set aside or dropped as poison by
// afterFailure.
func (sp *splitState) replaces(t *StoredTxn, types map[string]int, status, same int) bool {
	if t.ID == sp.confirmID && len(sp.aside) > 0 {
		return status != 0 && status == sp.aside[0].status
	}
	if !splittable(status) || same < SplitAfter {
		return false
	}
	n := 0
	for _, c := range types {
		n += c
	}
	return n > 1 || (n == 1 && len(t.Items) == 1 && serverFault(status) && len(sp.aside) < MaxSetAside)
}

// afterFailure applies the poison rules to a transaction that failed with
// status (0: no answer) for the same-th time in a row. It returns true when
// the transaction was given up as poison: the destination is known to take
// other transactions, so the sender goes on at once.
func (s *Sender) afterFailure(ctx context.Context, l Lease, t *StoredTxn, types map[string]int, status, same int, failures int, sp *splitState) bool {
	replace := sp.replaces(t, types, status, same)
	if t.ID == sp.confirmID && len(sp.aside) > 0 {
		sp.confirmID = ""
		sp.aside = sp.aside[1:]
		if len(sp.aside) == 0 {
			sp.confirm = false
		}
		if replace {
			// The destination took another transaction since, and this
			// EDU alone fails as it did: it is the EDU.
			s.drop(ctx, l, t, types, DropPoison)
			sp.base = failures
			return true
		}
		// Not the same failure: an ordinary transaction again.
		sp.confirm = false
		return false
	}
	if !replace {
		return false
	}
	n := 0
	for _, c := range types {
		n += c
	}
	if n > 1 {
		room := (n + 1) / 2
		if err := s.replaceStored(ctx, l, t, room, sp); err != nil {
			s.logReplaceErr(ctx, l, t, err)
			return false
		}
		sp.limit, sp.base = room, failures
		s.log.WarnContext(ctx, "split a failing federation transaction", "destination", l.Destination,
			"txn_id", t.ID, "status", status, "edus", n, "now", room)
		return false
	}
	sp.aside = append(sp.aside, asideEDU{item: t.Items[0], status: status})
	if err := s.replaceStored(ctx, l, t, sp.room(), sp); err != nil {
		sp.aside = sp.aside[:len(sp.aside)-1]
		s.logReplaceErr(ctx, l, t, err)
		return false
	}
	sp.base = failures
	s.log.WarnContext(ctx, "set aside a federation EDU that keeps failing alone", "destination", l.Destination,
		"txn_id", t.ID, "status", status, "set_aside", len(sp.aside))
	return false
}

func (s *Sender) logReplaceErr(ctx context.Context, l Lease, t *StoredTxn, err error) {
	if ctx.Err() == nil {
		s.log.ErrorContext(ctx, "splitting federation transaction failed", "destination", l.Destination, "txn_id", t.ID, "err", err)
	}
}
