package inbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Limits of a sendToDevice request.
const (
	// MaxEDUBytes is the largest m.direct_to_device EDU we build, wrapper
	// included. Every message must fit one EDU on its own, wherever its
	// recipient lives, so a message accepted locally could also be forwarded.
	MaxEDUBytes = 64 << 10
	// MaxEventTypeBytes and MaxTxnIDBytes bound the path parameters.
	MaxEventTypeBytes = 255
	MaxTxnIDBytes     = 255
)

// Messages is a decoded sendToDevice body: user id -> device id -> content.
type Messages map[string]map[string]json.RawMessage

// BuildAccept validates a decoded request from sender for this server and
// turns it into the rows to store: local messages and, for users of other
// servers, EDUs split by destination. It does no I/O.
func BuildAccept(serverName string, txn TxnKey, msgs Messages) (*Accept, error) {
	if txn.EventType == "" {
		return nil, matrix.Errorf(matrix.InvalidParam, "Empty event type.")
	}
	if len(txn.EventType) > MaxEventTypeBytes {
		return nil, matrix.Errorf(matrix.TooLarge, "Event type is longer than %d bytes.", MaxEventTypeBytes)
	}
	if err := matrix.ValidateEventType(txn.EventType); err != nil {
		return nil, matrix.Errorf(matrix.InvalidParam, "Invalid event type: %v.", err)
	}
	if txn.TxnID == "" {
		return nil, matrix.Errorf(matrix.InvalidParam, "Empty transaction id.")
	}
	if len(txn.TxnID) > MaxTxnIDBytes {
		return nil, matrix.Errorf(matrix.TooLarge, "Transaction id is longer than %d bytes.", MaxTxnIDBytes)
	}
	if err := matrix.ValidateTxnID(txn.TxnID); err != nil {
		return nil, matrix.Errorf(matrix.InvalidParam, "Invalid transaction id: %v.", err)
	}
	a := &Accept{Txn: txn, Sender: txn.UserID, EventType: txn.EventType, Response: []byte("{}")}
	e := newEDUShape(txn.UserID, txn.EventType)
	// Made on the first remote user: most sends have none.
	var remote map[string]Messages
	// The ids are sorted with slices.Sort, which (unlike sort.Strings)
	// lets a small fan-out's ids stay in these arrays on the stack.
	var userArr, deviceArr [8]string
	userIDs := userArr[:0]
	for userID := range msgs {
		userIDs = append(userIDs, userID)
	}
	slices.Sort(userIDs)
	for _, userID := range userIDs {
		uid, err := matrix.ParseUserID(userID)
		if err != nil {
			return nil, matrix.Errorf(matrix.InvalidParam, "Invalid user id %q: %v.", matrix.Quote(userID), err)
		}
		local := uid.Server == serverName
		if !local && matrix.SameServer(uid.Server, serverName) {
			// A local user spelled in another case: refused rather than
			// looked up in DNS as another server, or aliased to the
			// canonical spelling under a second user id.
			return nil, matrix.Errorf(matrix.InvalidParam, "User id %q names this server as %q; use %q.", matrix.Quote(userID), uid.Server, serverName)
		}
		devices := msgs[userID]
		deviceIDs := deviceArr[:0]
		for deviceID, content := range devices {
			if deviceID != AllDevices {
				if err := matrix.ValidateDeviceID(deviceID); err != nil {
					return nil, matrix.Errorf(matrix.InvalidParam, "Invalid device id %q of %q: %v.", matrix.Quote(deviceID), userID, err)
				}
			}
			if e.sizeAlone(userID, deviceID, content) > MaxEDUBytes {
				return nil, matrix.Errorf(matrix.TooLarge, "The message for %q device %q is larger than %d bytes.", userID, matrix.Quote(deviceID), MaxEDUBytes)
			}
			if !local {
				// Federation signs canonical JSON, which has no floats and
				// no integers beyond 2^53: refused now, not dropped later.
				if err := matrix.CheckCanonical(content); err != nil {
					return nil, matrix.Errorf(matrix.BadJSON, "The message for %q device %q cannot be sent over federation: %v.", userID, matrix.Quote(deviceID), err)
				}
			}
			deviceIDs = append(deviceIDs, deviceID)
		}
		slices.Sort(deviceIDs)
		if !local {
			// Forwarded as given: "*" stays unexpanded for the remote server.
			// One destination per server: DNS names ignore case.
			dest := strings.ToLower(uid.Server)
			if remote == nil {
				remote = map[string]Messages{}
			}
			if remote[dest] == nil {
				remote[dest] = Messages{}
			}
			remote[dest][userID] = devices
			continue
		}
		for _, deviceID := range deviceIDs {
			// "*" next to other device ids is just a device id nobody has.
			if deviceID == AllDevices && len(deviceIDs) > 1 {
				a.Unaddressable++
				continue
			}
			if a.Local == nil {
				a.Local = make([]LocalMessage, 0, localCap(msgs))
			}
			a.Local = append(a.Local, LocalMessage{UserID: userID, DeviceID: deviceID, Content: devices[deviceID]})
		}
	}
	if len(remote) > 0 {
		destinations := make([]string, 0, len(remote))
		for d := range remote {
			destinations = append(destinations, d)
		}
		slices.Sort(destinations)
		for _, d := range destinations {
			a.Remote = append(a.Remote, e.split(d, remote[d])...)
		}
	}
	a.Stale = markStale(a.EventType, a.Local)
	return a, nil
}

// localCap is how many local messages msgs can make at most: the length
// a.Local is made with, so that it is allocated once.
func localCap(msgs Messages) int {
	n := 0
	for _, devices := range msgs {
		n += len(devices)
	}
	return n
}

// eduShape builds m.direct_to_device EDUs of one sender and type and knows
// their exact serialized size, so splitting needs no trial encoding. The
// size is known from the start (every message of a send is checked
// against it); the bytes of the wrapper are only built by split, for a
// send that has remote users.
type eduShape struct {
	sender, eventType string
	// fixed is the size of the wrapper: head and tail.
	fixed int
}

const messageIDLen = 32 // 128 random bits, hex

// The wrapper of an EDU around its messages object; the message id and
// the quoted sender and type go between the parts of the head.
const (
	eduHeadID     = `{"content":{"message_id":"`
	eduHeadSender = `","sender":`
	eduHeadType   = `,"type":`
	eduHeadEnd    = `,"messages":{`
	eduTail       = `}},"edu_type":"m.direct_to_device"}`
)

func newEDUShape(sender, eventType string) eduShape {
	return eduShape{sender: sender, eventType: eventType,
		fixed: len(eduHeadID) + messageIDLen + len(eduHeadSender) + matrix.JSONStringLen(sender) +
			len(eduHeadType) + matrix.JSONStringLen(eventType) + len(eduHeadEnd) + len(eduTail)}
}

// head is the EDU up to where its messages object begins, with a message
// id of zeros for encode to overwrite.
func (e eduShape) head() []byte {
	h := make([]byte, 0, e.fixed-len(eduTail))
	h = append(h, eduHeadID...)
	for range messageIDLen {
		h = append(h, '0')
	}
	h = append(h, eduHeadSender...)
	h = matrix.AppendJSONString(h, e.sender)
	h = append(h, eduHeadType...)
	h = matrix.AppendJSONString(h, e.eventType)
	return append(h, eduHeadEnd...)
}

func (e eduShape) sizeAlone(userID, deviceID string, content json.RawMessage) int {
	return e.fixed + matrix.JSONStringLen(userID) + 3 + matrix.JSONStringLen(deviceID) + 1 + len(content)
}

type eduEntry struct {
	userID  string
	devices []string
}

// split packs one destination's messages into as few EDUs as fit MaxEDUBytes,
// users and devices in sorted order.
func (e eduShape) split(destination string, msgs Messages) []OutboundEDU {
	var out []OutboundEDU
	var cur []eduEntry
	head := e.head()
	size, count := e.fixed, 0
	flush := func() {
		if count == 0 {
			return
		}
		out = append(out, encodeEDU(head, size, destination, cur, msgs, count))
		cur, size, count = nil, e.fixed, 0
	}
	userIDs := make([]string, 0, len(msgs))
	for u := range msgs {
		userIDs = append(userIDs, u)
	}
	slices.Sort(userIDs)
	for _, userID := range userIDs {
		deviceIDs := make([]string, 0, len(msgs[userID]))
		for d := range msgs[userID] {
			deviceIDs = append(deviceIDs, d)
		}
		slices.Sort(deviceIDs)
		qUser := matrix.JSONStringLen(userID)
		for _, deviceID := range deviceIDs {
			cost := matrix.JSONStringLen(deviceID) + 1 + len(msgs[userID][deviceID])
			newUser := len(cur) == 0 || cur[len(cur)-1].userID != userID
			if newUser {
				cost += qUser + 3
				if len(cur) > 0 {
					cost++ // comma between users
				}
			} else {
				cost++ // comma between devices
			}
			if count > 0 && size+cost > MaxEDUBytes {
				flush()
				cost = qUser + 3 + matrix.JSONStringLen(deviceID) + 1 + len(msgs[userID][deviceID])
				newUser = true
			}
			if newUser {
				cur = append(cur, eduEntry{userID: userID})
			}
			cur[len(cur)-1].devices = append(cur[len(cur)-1].devices, deviceID)
			size += cost
			count++
		}
	}
	flush()
	return out
}

// encodeEDU writes one EDU of size bytes, as split counted them.
func encodeEDU(head []byte, size int, destination string, entries []eduEntry, msgs Messages, count int) OutboundEDU {
	id := newMessageID()
	b := make([]byte, 0, size)
	b = append(b, head...)
	copy(b[len(eduHeadID):], id)
	for i, en := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = matrix.AppendJSONString(b, en.userID)
		b = append(b, ":{"...)
		for j, d := range en.devices {
			if j > 0 {
				b = append(b, ',')
			}
			b = matrix.AppendJSONString(b, d)
			b = append(b, ':')
			b = append(b, msgs[en.userID][d]...)
		}
		b = append(b, '}')
	}
	b = append(b, eduTail...)
	return OutboundEDU{Destination: destination, MessageID: id, EDU: slices.Clip(b), Messages: count}
}

func newMessageID() string {
	var b [messageIDLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// ErrRecipientNotLocal is returned by BuildRemoteAccept when a message of a
// remote EDU is addressed to a user of another server (or to a malformed
// user id): a server may only deliver to its own users.
var ErrRecipientNotLocal = errors.New("recipient is not a local user")

// BuildRemoteAccept turns the messages of an m.direct_to_device EDU that
// origin sent into the rows to store. Every user must be local to serverName
// (else ErrRecipientNotLocal and nothing is built); "*" follows the same rule
// as for local sends. Contents must already be compact JSON objects.
func BuildRemoteAccept(serverName, origin, messageID, sender, eventType string, msgs Messages) (*RemoteAccept, error) {
	r := &RemoteAccept{Origin: origin, MessageID: messageID, Sender: sender, EventType: eventType}
	userIDs := make([]string, 0, len(msgs))
	for userID := range msgs {
		uid, err := matrix.ParseUserID(userID)
		if err != nil || uid.Server != serverName {
			return nil, fmt.Errorf("%w: %q", ErrRecipientNotLocal, userID)
		}
		userIDs = append(userIDs, userID)
	}
	slices.Sort(userIDs)
	for _, userID := range userIDs {
		devices := msgs[userID]
		deviceIDs := make([]string, 0, len(devices))
		for d := range devices {
			deviceIDs = append(deviceIDs, d)
		}
		slices.Sort(deviceIDs)
		for _, deviceID := range deviceIDs {
			if deviceID == AllDevices && len(deviceIDs) > 1 {
				r.Unaddressable++
				continue
			}
			r.Local = append(r.Local, LocalMessage{UserID: userID, DeviceID: deviceID, Content: devices[deviceID]})
		}
	}
	r.Stale = markStale(r.EventType, r.Local)
	return r, nil
}
