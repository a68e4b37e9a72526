package loadgen

import (
	"strconv"
	"strings"
)

// EventType is the to-device event type every load message has.
const EventType = "org.todeviced.load"

// MsgID identifies one to-device message of a run: the sender (the load
// generator's sender index), that sender's send sequence number, and the
// recipient device index. Sequence numbers grow by one per send of a sender,
// which is what lets the verifier check the order of a (sender, device) pair.
type MsgID struct {
	Sender uint32
	Seq    uint32
	Device uint32
}

func (id MsgID) String() string {
	return "s" + strconv.FormatUint(uint64(id.Sender), 10) + "/n" + strconv.FormatUint(uint64(id.Seq), 10) +
		"/d" + strconv.FormatUint(uint64(id.Device), 10)
}

// Content is the decoded content of a load message. The JSON keys are short
// and fixed so the hot path can build content with appends; the unique
// message id is (Run, Sender, Seq, Device).
type Content struct {
	Run    string `json:"load_run"`
	Sender uint32 `json:"sender"`
	Seq    uint32 `json:"seq"`
	Device uint32 `json:"device"`
	// SentNS is the sender's wall clock (Unix ns) when the send was first
	// attempted; retries carry the same body, so latency includes retries.
	SentNS int64 `json:"sent_ns"`
	// "pad" fills the content up to --message-bytes; it is not decoded.
}

// appendContent appends one message's content, padded so the whole object
// is size bytes when size is large enough. pad must be at least size long.
func appendContent(b []byte, run string, id MsgID, sentNS int64, size int, pad string) []byte {
	start := len(b)
	b = append(b, `{"load_run":"`...)
	b = append(b, run...)
	b = append(b, `","sender":`...)
	b = strconv.AppendUint(b, uint64(id.Sender), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, uint64(id.Seq), 10)
	b = append(b, `,"device":`...)
	b = strconv.AppendUint(b, uint64(id.Device), 10)
	b = append(b, `,"sent_ns":`...)
	b = strconv.AppendInt(b, sentNS, 10)
	b = append(b, `,"pad":"`...)
	// The closing `"}` is 2 bytes.
	if n := size - (len(b) - start) - 2; n > 0 {
		b = append(b, pad[:min(n, len(pad))]...)
	}
	return append(b, `"}`...)
}

// padding returns a filler string for contents of up to size bytes.
func padding(size int) string { return strings.Repeat("x", max(size, 0)) }

// appendJSONString appends s as a JSON string. Matrix ids and our device ids
// are printable ASCII, so only quote and backslash need escaping; anything
// else is escaped as \u00XX to stay valid whatever a caller passes.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
