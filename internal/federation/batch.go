package federation

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// Transaction limits.
const (
	// MaxEDUsPerTxn is the spec's limit of EDUs in one transaction.
	MaxEDUsPerTxn = 100
	// ReservedDeviceListEDUs are slots of every transaction that the
	// to-device source never takes on its first pass: a flood of to-device
	// messages must not starve device-list updates (the device-list
	// outbox, a second EDU source). Unused reserved slots are offered to
	// the other sources on a second pass.
	ReservedDeviceListEDUs = 10
	// ToDeviceQuota is the to-device source's guaranteed share.
	ToDeviceQuota = MaxEDUsPerTxn - ReservedDeviceListEDUs
)

// SourceEDU is one EDU queued in a source's outbox.
type SourceEDU struct {
	Pos int64
	// Type is the EDU's edu_type.
	Type string
	// EDU is the complete EDU object, as it is to be sent.
	EDU json.RawMessage
}

// EDUSource is an outbox of EDUs for other servers that the sender drains.
// The positions of a source increase in the order its EDUs must be sent to
// one destination (invariant 3), and the sender deletes exactly the positions
// it sent, through the store, in the transaction that finishes the stored
// transaction: the backend maps Name to the source's own delete statement.
type EDUSource interface {
	// Name identifies the source in stored transactions.
	Name() string
	// Peek returns up to limit EDUs queued for destination, lowest
	// position first, without removing them.
	Peek(ctx context.Context, destination string, limit int) ([]SourceEDU, error)
	// Destinations lists the destinations with EDUs queued.
	Destinations(ctx context.Context) ([]string, error)
}

// SourceQuota is an EDU source and its guaranteed share of a transaction.
type SourceQuota struct {
	Source EDUSource
	Quota  int
}

// Outbox is an EDU source that can also be handed out by the feed (and
// acknowledged) and that the housekeeper expires and measures: the inbox's
// to-device outbox and the device-list outbox, adapted in the wiring
// (internal/server), so that federation knows neither.
type Outbox interface {
	EDUSource
	// Delete deletes exactly the EDUs of destination at the positions and
	// counts them by EDU type.
	Delete(ctx context.Context, destination string, positions []int64) (map[string]int, error)
	// Expire deletes up to limit EDUs queued before cutoff, oldest first,
	// sparing those of stored transactions, and counts them by
	// destination.
	Expire(ctx context.Context, cutoff time.Time, limit int) ([]DestinationCount, error)
	// Backlog counts the queued EDUs and finds the oldest.
	Backlog(ctx context.Context) (Backlog, error)
}

// DestinationCount is a number of outbox EDUs of one destination.
type DestinationCount struct {
	Destination string
	Count       int
}

// Backlog summarises an outbox.
type Backlog struct {
	// Pending is the number of queued EDUs; an outbox may estimate it for
	// large tables rather than count every row.
	Pending int64
	// Oldest is when the oldest EDU was queued (zero if none).
	Oldest time.Time
}

// batchEDU is a peeked EDU and the source it came from.
type batchEDU struct {
	SourceEDU
	source string
}

// buildBatch peeks every source and picks at most room EDUs: each source
// first gets up to its quota, then slots left over go to the sources in
// order. Within a source, EDUs keep their order. EDUs for which skip is true
// (at most skipped of them per source, so that they cannot crowd out the
// room) are left out; skip may be nil.
func buildBatch(ctx context.Context, destination string, sources []SourceQuota, room int, skip func(TxnItem) bool, skipped int) ([]batchEDU, error) {
	peeked := make([][]SourceEDU, len(sources))
	taken := make([]int, len(sources))
	for i, s := range sources {
		q, err := s.Source.Peek(ctx, destination, room+skipped)
		if err != nil {
			return nil, err
		}
		if skip != nil {
			name := s.Source.Name()
			q = slices.DeleteFunc(q, func(e SourceEDU) bool { return skip(TxnItem{Source: name, Pos: e.Pos}) })
		}
		peeked[i] = q
		taken[i] = min(len(q), s.Quota, room)
		room -= taken[i]
	}
	for i := range sources {
		more := min(len(peeked[i])-taken[i], room)
		taken[i] += more
		room -= more
	}
	var out []batchEDU
	for i, s := range sources {
		for _, e := range peeked[i][:taken[i]] {
			out = append(out, batchEDU{SourceEDU: e, source: s.Source.Name()})
		}
	}
	return out, nil
}

// encodeEDUList is the JSON array of the EDUs, as stored and sent.
func encodeEDUList(edus []json.RawMessage) json.RawMessage {
	n := 2
	for _, e := range edus {
		n += len(e) + 1
	}
	var b bytes.Buffer
	b.Grow(n)
	b.WriteByte('[')
	for i, e := range edus {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// transactionBody is the body of PUT /send/{txnId}: the stored EDUs and
// origin_server_ts, so that every attempt sends the same bytes.
func transactionBody(origin string, t *StoredTxn) []byte {
	var b bytes.Buffer
	b.Grow(len(t.EDUs) + len(origin) + 64)
	b.WriteString(`{"edus":`)
	b.Write(t.EDUs)
	b.WriteString(`,"origin":`)
	o, _ := json.Marshal(origin) // a string always marshals
	b.Write(o)
	b.WriteString(`,"origin_server_ts":`)
	b.WriteString(strconv.FormatInt(t.OriginServerTS, 10))
	b.WriteString(`,"pdus":[]}`)
	return b.Bytes()
}

// txnIDs makes transaction ids in todeviced's own namespace: "tdv", a random
// epoch made when the process starts, and a counter. A homeserver sending
// its own transactions under the same server name never uses the prefix, so
// the receiver's (origin, txnId) deduplication cannot confuse the two; the
// epoch keeps ids of restarts and replicas apart.
type txnIDs struct {
	prefix string
	n      atomic.Uint64
}

// TxnIDPrefix starts every transaction id todeviced sends.
const TxnIDPrefix = "tdv"

func newTxnIDs() *txnIDs {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return &txnIDs{prefix: TxnIDPrefix + hex.EncodeToString(b[:]) + "."}
}

func (t *txnIDs) next() string { return t.prefix + strconv.FormatUint(t.n.Add(1), 10) }
