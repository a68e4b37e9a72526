package devicesync

import (
	"strconv"
	"strings"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// The tokens this package makes, all led by the database's epoch (a random
// id made with the schema, so a token of a restored or recreated database is
// recognised and never acknowledges anything):
//
//	to-device position   EPOCH_NID_LO_HI       (the internal /sync's to_device.next_batch)
//	device-list position EPOCH_POS             (the internal /sync's device_lists.next_batch)
//	client /sync token   EPOCH_NID_LO_HI_POS   (next_batch of the client /sync; from/to of /keys/changes)
//
// Every number is read by readCount and every epoch by validEpoch, so the
// three parsers agree on what this server can have made; anything else is
// 400 M_INVALID_PARAM quoting (a short prefix of) what was refused.

// ListsSince is where the device-list part of a sync starts. Its zero value
// is an initial sync: no device-list answer at all.
type ListsSince struct {
	// Incremental is false for an initial sync.
	Incremental bool
	// Pos is the device-list stream position the client was last given.
	Pos int64
	// Everyone is set when the position is from another database epoch, so
	// the exact changes are unknowable: the answer is everyone the user
	// shares an encrypted room with.
	Everyone bool
}

// ListsAt is an incremental device-list since at pos of this epoch (for a
// caller that keeps positions itself, such as a sliding-sync connection).
func ListsAt(pos int64) ListsSince { return ListsSince{Incremental: true, Pos: pos} }

// listsOfAnotherEpoch is a since that cannot be placed in this database.
var listsOfAnotherEpoch = ListsSince{Incremental: true, Everyone: true}

// Token is a client /sync token taken apart.
type Token struct {
	// ToDevice acknowledges and continues the device's inbox.
	ToDevice inbox.Position
	// Lists continues the device-list stream.
	Lists ListsSince
}

// ParseToken parses a client /sync token "EPOCH_NID_LO_HI_POS" made for the
// device dev. Its to-device half follows ParseToDevice's rules; its
// device-list half is everyone-changed when the token is of another epoch
// (even when the to-device half was made for another incarnation of the
// device, the device-list position stays good: it is the user's).
func ParseToken(epoch string, dev inbox.Recipient, s string) (Token, error) {
	i := strings.LastIndexByte(s, '_')
	if i < 0 {
		return Token{}, badSince(s)
	}
	td, ok := readToDevice(s[:i])
	if !ok {
		return Token{}, badSince(s)
	}
	pos, ok := readCount(s[i+1:])
	if !ok {
		return Token{}, badSince(s)
	}
	if td.epoch != epoch {
		return Token{ToDevice: inbox.Position{NID: dev.NID}, Lists: listsOfAnotherEpoch}, nil
	}
	return Token{ToDevice: td.place(dev), Lists: ListsAt(pos)}, nil
}

// FormatToken renders a client /sync token: the to-device position td and
// the device-list position lists, in the database's epoch.
func FormatToken(epoch string, td inbox.Position, lists int64) string {
	return FormatToDevice(epoch, td) + "_" + strconv.FormatInt(lists, 10)
}

// ParseToDevice parses a to-device token "EPOCH_NID_LO_HI" made for the
// device dev. A token of another database epoch (a recreated or restored
// database) or of another incarnation of the device acknowledges nothing: it
// yields the device's zero position, as an initial sync. A token this server
// cannot have made is M_INVALID_PARAM. (A well-formed position above every
// one issued is refused later, by the store's sync query, before it deletes
// anything.)
func ParseToDevice(epoch string, dev inbox.Recipient, s string) (inbox.Position, error) {
	td, ok := readToDevice(s)
	if !ok {
		return inbox.Position{}, badSince(s)
	}
	if td.epoch != epoch {
		return inbox.Position{NID: dev.NID}, nil
	}
	return td.place(dev), nil
}

// FormatToDevice renders p in the database's epoch as "EPOCH_NID_LO_HI".
func FormatToDevice(epoch string, p inbox.Position) string {
	var b strings.Builder
	b.Grow(len(epoch) + 80)
	b.WriteString(epoch)
	for _, n := range [...]int64{p.NID, p.Lo, p.Hi} {
		b.WriteByte('_')
		b.WriteString(strconv.FormatInt(n, 10))
	}
	return b.String()
}

// ParseLists parses a device-list token "EPOCH_POS". A token of another
// epoch is everyone-changed; one this server cannot have made is
// M_INVALID_PARAM. (A position above the stream's head is refused by
// devicelists when the changes are computed.)
func ParseLists(epoch, s string) (ListsSince, error) {
	e, p, ok := strings.Cut(s, "_")
	n, okN := readCount(p)
	if !ok || !okN || !validEpoch(e) {
		return ListsSince{}, matrix.Errorf(matrix.InvalidParam, "Unknown or malformed device-list token %q.", matrix.Quote(s))
	}
	if e != epoch {
		return listsOfAnotherEpoch, nil
	}
	return ListsAt(n), nil
}

// FormatLists renders a device-list position as "EPOCH_POS".
func FormatLists(epoch string, pos int64) string {
	return epoch + "_" + strconv.FormatInt(pos, 10)
}

// toDeviceToken is a to-device token read but not yet placed in this
// database and for this device.
type toDeviceToken struct {
	epoch string
	pos   inbox.Position
}

// place is the position the token means for dev in the token's epoch:
// another incarnation of the device (another NID) starts from nothing.
func (t toDeviceToken) place(dev inbox.Recipient) inbox.Position {
	if t.pos.NID != dev.NID {
		return inbox.Position{NID: dev.NID}
	}
	return t.pos
}

// readToDevice reads "EPOCH_NID_LO_HI" with LO <= HI.
func readToDevice(s string) (toDeviceToken, bool) {
	parts := strings.Split(s, "_")
	if len(parts) != 4 || !validEpoch(parts[0]) {
		return toDeviceToken{}, false
	}
	var n [3]int64
	for i, p := range parts[1:] {
		v, ok := readCount(p)
		if !ok {
			return toDeviceToken{}, false
		}
		n[i] = v
	}
	p := inbox.Position{NID: n[0], Lo: n[1], Hi: n[2]}
	if p.Lo > p.Hi {
		return toDeviceToken{}, false
	}
	return toDeviceToken{epoch: parts[0], pos: p}, true
}

func badSince(s string) error {
	return matrix.Errorf(matrix.InvalidParam, "Unknown or malformed since token %q.", matrix.Quote(s))
}

// validEpoch accepts what the schema makes an epoch of: 1 to 32 lower-case
// letters and digits.
func validEpoch(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// readCount is the one digit reader of every token: plain decimal digits
// that fit an int64, no sign, no spaces, no leading "+".
func readCount(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}
