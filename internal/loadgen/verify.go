package loadgen

import (
	"fmt"
	"maps"
	"slices"
	"sync"
)

// The verification model.
//
// Sending: each sender numbers its sends 0, 1, 2, … and makes them one at a
// time; a send is retried with the same txnId (and the same body) until the
// server answers 200, so a send is "confirmed" once any attempt got 200.
// Every confirmed send must reach each of its recipients exactly once; a send
// never confirmed (the run gave up on it) may reach them at most once.
//
// Receiving: a sync response counts only when the syncer processed it: read
// completely, decoded, and its next_batch made the since of the next request.
// That next request acknowledges the whole response, and the server must
// never again hand out what a since it issued covers, so
//
//   - the same message id in two processed responses is a DUPLICATE, even if
//     the acknowledging request itself failed;
//   - a message id seen only in a response the syncer did not process (cut
//     by a crash, undecodable, or dropped on purpose with --sync-drop-rate)
//     is not a delivery: the protocol hands it out again for the same since,
//     and the later processed copy is its delivery (counted as REDELIVERED,
//     which is correct behaviour, not a duplicate);
//   - a confirmed message never in a processed response is LOST;
//   - for one (sender, device) pair, processed deliveries must come in send
//     order: a first delivery after one with a higher sequence number is
//     REORDERED;
//   - a message of this run that nobody sent to that device (or whose sender,
//     type or content is wrong) is UNEXPECTED or CORRUPT.

// SendLog is one sender's record of its sends. Only its sender goroutine
// writes it, so it needs no lock; Verify reads it after the senders stopped.
type SendLog struct {
	fanout int
	// recipients[seq*fanout : (seq+1)*fanout] are the devices of send seq.
	recipients []uint32
	confirmed  []bool
}

// NewSendLog returns an empty log for sends of fanout recipients each.
func NewSendLog(fanout int) *SendLog { return &SendLog{fanout: fanout} }

// Add records a new send to recipients (exactly fanout devices) and returns
// its sequence number.
func (l *SendLog) Add(recipients []uint32) uint32 {
	if len(recipients) != l.fanout {
		panic(fmt.Sprintf("loadgen: send to %d devices in a log of fan-out %d", len(recipients), l.fanout))
	}
	seq := uint32(len(l.confirmed))
	l.recipients = append(l.recipients, recipients...)
	l.confirmed = append(l.confirmed, false)
	return seq
}

// Confirm marks send seq as answered 200.
func (l *SendLog) Confirm(seq uint32) { l.confirmed[seq] = true }

// Len is the number of sends recorded.
func (l *SendLog) Len() int { return len(l.confirmed) }

// Recipients returns the devices of send seq.
func (l *SendLog) Recipients(seq uint32) []uint32 {
	return l.recipients[int(seq)*l.fanout : (int(seq)+1)*l.fanout]
}

// Inbox is what one device's syncer received. Its syncer writes it; the
// progress reporter and Verify read counters, hence the (uncontended) lock.
type Inbox struct {
	mu sync.Mutex
	// bySender holds, per sender, the sequence numbers of processed
	// deliveries in the order they were processed.
	bySender map[uint32]*pairLog
	// unprocessed holds ids seen in responses the syncer did not process and
	// not (yet) delivered since.
	unprocessed map[MsgID]struct{}
	distinct    int64
	redelivered int64
	corrupt     int64
	examples    []string
}

type pairLog struct {
	seqs []uint32
	max  int64
}

// NewInbox returns an empty inbox.
func NewInbox() *Inbox {
	return &Inbox{bySender: map[uint32]*pairLog{}}
}

// Deliver records a message found in a processed response. It reports
// whether this is the first delivery of the message (so progress counts
// distinct deliveries, and the drain knows when everything has arrived).
func (in *Inbox) Deliver(sender, seq uint32) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	p := in.bySender[sender]
	if p == nil {
		p = &pairLog{max: -1}
		in.bySender[sender] = p
	}
	first := int64(seq) > p.max
	if !first {
		// The rare path: an out-of-order or repeated delivery.
		first = !slices.Contains(p.seqs, seq)
	}
	p.seqs = append(p.seqs, seq)
	p.max = max(p.max, int64(seq))
	if in.unprocessed != nil {
		// The Device field is not needed to key one device's inbox.
		k := MsgID{Sender: sender, Seq: seq}
		if _, ok := in.unprocessed[k]; ok {
			delete(in.unprocessed, k)
			if first {
				in.redelivered++
			}
		}
	}
	if first {
		in.distinct++
	}
	return first
}

// Unprocessed records a message found in a response the syncer did not
// process: its later delivery is a legitimate redelivery.
func (in *Inbox) Unprocessed(sender, seq uint32) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.unprocessed == nil {
		in.unprocessed = map[MsgID]struct{}{}
	}
	in.unprocessed[MsgID{Sender: sender, Seq: seq}] = struct{}{}
}

// Corrupt records an event that is not a well-formed message of this run
// for this device.
func (in *Inbox) Corrupt(why string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.corrupt++
	if len(in.examples) < maxExamples {
		in.examples = append(in.examples, why)
	}
}

// Distinct is the number of distinct messages delivered.
func (in *Inbox) Distinct() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.distinct
}

const maxExamples = 10

// Verdict is the outcome of verification.
type Verdict struct {
	// Expected is the messages of confirmed sends: each must arrive once.
	Expected int64 `json:"expected"`
	// Delivered is the distinct messages processed (confirmed or not).
	Delivered int64 `json:"delivered"`
	Lost      int64 `json:"lost"`
	// Duplicates counts processed deliveries beyond the first of a message.
	Duplicates int64 `json:"duplicates"`
	Reordered  int64 `json:"reordered"`
	// Unexpected counts distinct messages of this run delivered to a device
	// no send addressed them to.
	Unexpected int64 `json:"unexpected"`
	// Corrupt counts events that were not well-formed messages of this run.
	Corrupt int64 `json:"corrupt"`
	// Redelivered counts messages delivered after appearing in a response
	// the syncer did not process: correct protocol behaviour.
	Redelivered int64 `json:"redelivered"`
	// UnconfirmedSends never got a 200; UnconfirmedDelivered counts their
	// messages that arrived anyway (allowed: the send may have committed).
	UnconfirmedSends     int64 `json:"unconfirmed_sends"`
	UnconfirmedDelivered int64 `json:"unconfirmed_delivered"`
	// Examples names the first few violations.
	Examples []string `json:"examples,omitempty"`
	OK       bool     `json:"ok"`
}

func (v *Verdict) example(format string, args ...any) {
	if len(v.Examples) < maxExamples {
		v.Examples = append(v.Examples, fmt.Sprintf(format, args...))
	}
}

// Verify checks what the inboxes received against what the senders sent.
// Call it after every sender and syncer has stopped. name renders a device
// index for examples (nil: the index).
func Verify(logs []*SendLog, inboxes []*Inbox, name func(device uint32) string) Verdict {
	if name == nil {
		name = func(d uint32) string { return fmt.Sprintf("device %d", d) }
	}
	var v Verdict
	// expected[device][sender] lists confirmed sequence numbers ascending;
	// unconfirmed[device][sender] likewise for sends never confirmed.
	expected := make([]map[uint32][]uint32, len(inboxes))
	unconfirmed := make([]map[uint32][]uint32, len(inboxes))
	for s, l := range logs {
		for seq := range l.Len() {
			target := expected
			if !l.confirmed[seq] {
				target = unconfirmed
				v.UnconfirmedSends++
				v.example("send %d of sender %d never got a 200", seq, s)
			} else {
				v.Expected += int64(l.fanout)
			}
			for _, d := range l.Recipients(uint32(seq)) {
				if int(d) >= len(target) {
					continue
				}
				if target[d] == nil {
					target[d] = map[uint32][]uint32{}
				}
				target[d][uint32(s)] = append(target[d][uint32(s)], uint32(seq))
			}
		}
	}
	for d, in := range inboxes {
		in.mu.Lock()
		v.Corrupt += in.corrupt
		v.Redelivered += in.redelivered
		for _, e := range in.examples {
			v.example("corrupt at %s: %s", name(uint32(d)), e)
		}
		senders := make(map[uint32]bool, len(in.bySender)+len(expected[d]))
		for s := range in.bySender {
			senders[s] = true
		}
		for s := range expected[d] {
			senders[s] = true
		}
		for _, s := range slices.Sorted(maps.Keys(senders)) {
			var got []uint32
			if p := in.bySender[s]; p != nil {
				got = p.seqs
			}
			verifyPair(&v, s, uint32(d), got, expected[d][s], unconfirmed[d][s], name)
		}
		in.mu.Unlock()
	}
	v.OK = v.Lost == 0 && v.Duplicates == 0 && v.Reordered == 0 && v.Unexpected == 0 &&
		v.Corrupt == 0 && v.UnconfirmedSends == 0
	return v
}

// verifyPair checks one (sender, device) pair: got is the processed
// deliveries in processing order, want and maybe the confirmed and
// unconfirmed sequence numbers addressed to the device, ascending.
func verifyPair(v *Verdict, sender, device uint32, got, want, maybe []uint32, name func(uint32) string) {
	// Order and duplicates, in processing order. seen is only built when a
	// delivery goes backwards, which a correct server never causes.
	var seen map[uint32]bool
	hi := int64(-1)
	for i, seq := range got {
		if int64(seq) > hi {
			hi = int64(seq)
			if seen != nil {
				seen[seq] = true
			}
			continue
		}
		if seen == nil {
			seen = make(map[uint32]bool, len(got))
			for _, s := range got[:i] {
				seen[s] = true
			}
		}
		if seen[seq] {
			v.Duplicates++
			v.example("duplicate: %s delivered again to %s", MsgID{sender, seq, device}, name(device))
			continue
		}
		seen[seq] = true
		v.Reordered++
		v.example("reordered: %s delivered to %s after seq %d of the same sender", MsgID{sender, seq, device}, name(device), hi)
	}
	// Loss and unexpected: merge the distinct deliveries with what was sent.
	distinct := slices.Compact(slices.Sorted(slices.Values(got)))
	v.Delivered += int64(len(distinct))
	i, j := 0, 0
	for i < len(distinct) || j < len(want) {
		switch {
		case j == len(want) || (i < len(distinct) && distinct[i] < want[j]):
			seq := distinct[i]
			if _, ok := slices.BinarySearch(maybe, seq); ok {
				v.UnconfirmedDelivered++
			} else {
				v.Unexpected++
				v.example("unexpected: %s delivered to %s, which no send addressed", MsgID{sender, seq, device}, name(device))
			}
			i++
		case i == len(distinct) || want[j] < distinct[i]:
			v.Lost++
			v.example("lost: %s never delivered to %s", MsgID{sender, want[j], device}, name(device))
			j++
		default:
			i++
			j++
		}
	}
}
