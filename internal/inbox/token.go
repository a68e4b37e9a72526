package inbox

import (
	"strconv"
	"strings"

	"github.com/todeviced/todeviced/internal/mxerr"
	"github.com/todeviced/todeviced/internal/mxjson"
)

// Position is where a device's reader stands in its inbox. Every message of
// the device at or below Lo was deleted before the position was handed out;
// the next sync acknowledges (deletes) the messages in (Lo, Hi] and reads above
// Hi. Carrying Lo lets the acknowledgement scan only the delivered range
// instead of every dead index entry below it.
type Position struct {
	NID int64
	Lo  int64
	Hi  int64
}

// Acked is the position after p has been acknowledged: nothing left to delete.
func (p Position) Acked() Position { return Position{NID: p.NID, Lo: p.Hi, Hi: p.Hi} }

// FormatToken renders p in the database's epoch as "EPOCH_NID_LO_HI".
func FormatToken(epoch string, p Position) string {
	var b strings.Builder
	b.Grow(len(epoch) + 40)
	b.WriteString(epoch)
	for _, n := range [...]int64{p.NID, p.Lo, p.Hi} {
		b.WriteByte('_')
		b.WriteString(strconv.FormatInt(n, 10))
	}
	return b.String()
}

// ParseToken parses a token made by FormatToken for the device dev. A token of
// another database epoch (a recreated or restored database) or of another
// incarnation of the device acknowledges nothing: it yields the zero position,
// as an initial sync. A token this server cannot have made is M_INVALID_PARAM.
func ParseToken(epoch string, dev Recipient, s string) (Position, error) {
	parts := strings.Split(s, "_")
	if len(parts) != 4 {
		return Position{}, badToken(s)
	}
	if !validEpoch(parts[0]) {
		return Position{}, badToken(s)
	}
	var n [3]int64
	for i, p := range parts[1:] {
		v, ok := parseNonNegative(p)
		if !ok {
			return Position{}, badToken(s)
		}
		n[i] = v
	}
	p := Position{NID: n[0], Lo: n[1], Hi: n[2]}
	if p.Lo > p.Hi {
		return Position{}, badToken(s)
	}
	if parts[0] != epoch || p.NID != dev.NID {
		return Position{NID: dev.NID}, nil
	}
	return p, nil
}

func badToken(s string) error {
	return mxerr.New(mxerr.InvalidParam, "Unknown or malformed since token %q.", mxjson.Quote(s))
}

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

// parseNonNegative accepts plain decimal digits only: no sign, no spaces.
func parseNonNegative(s string) (int64, bool) {
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
