package matrix

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxOpaqueIDLength bounds every identifier the spec leaves opaque (device
// ids, event types, transaction ids, message ids, room ids), in bytes: the
// spec's 255 for the identifiers it bounds, applied to the rest alike.
const MaxOpaqueIDLength = 255

// Kind names an identifier in error messages ("device id").
type Kind string

// The identifier kinds Validate knows.
const (
	DeviceID  Kind = "device id"
	EventType Kind = "event type"
	TxnID     Kind = "transaction id"
	MessageID Kind = "message id"
	RoomID    Kind = "room id"
	Token     Kind = "token"
)

// Validate checks an identifier the spec leaves (mostly) opaque: 1 to
// MaxOpaqueIDLength bytes of valid UTF-8 with no control characters (C0, DEL,
// C1). That is what every store, every JSON encoder and every log line can
// carry unchanged: PostgreSQL refuses NUL in text, SQLite would keep NUL and
// silently turn invalid UTF-8 into U+FFFD, and a control character in a path
// or a log line is an injection waiting to happen. Room ids must also start
// with '!'.
//
// The grammar is not narrowed further (to the spec's "opaque identifier"
// characters) because clients and servers in the wild use device ids, event
// types and transaction ids outside it, and refusing them would break them.
func ValidateID(kind Kind, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", kind)
	}
	if len(s) > MaxOpaqueIDLength {
		return fmt.Errorf("%s is longer than %d bytes", kind, MaxOpaqueIDLength)
	}
	if kind == RoomID && !strings.HasPrefix(s, "!") {
		return fmt.Errorf("%s does not start with '!'", kind)
	}
	if err := checkText(s); err != nil {
		return fmt.Errorf("%s %w", kind, err)
	}
	return nil
}

// ValidateDeviceID, ValidateEventType, ValidateTxnID, ValidateMessageID and
// ValidateRoomID are Validate for one kind.
func ValidateDeviceID(s string) error  { return ValidateID(DeviceID, s) }
func ValidateEventType(s string) error { return ValidateID(EventType, s) }
func ValidateTxnID(s string) error     { return ValidateID(TxnID, s) }
func ValidateMessageID(s string) error { return ValidateID(MessageID, s) }
func ValidateRoomID(s string) error    { return ValidateID(RoomID, s) }

// ValidateText checks free text that is stored and echoed (display names):
// valid UTF-8 without NUL or other control characters except tab and
// newline. Unlike identifiers it may be empty and has no length limit here.
func ValidateText(s string) error { return scanText(s, true) }

// checkText reports the first character that makes s unsafe as an
// identifier.
func checkText(s string) error { return scanText(s, false) }

// scanText reports the first byte of s that is not valid UTF-8 or is a
// control character (C0, DEL, C1); text may hold tabs and newlines.
func scanText(s string, text bool) error {
	for i := 0; i < len(s); {
		r, size := rune(s[i]), 1
		if r >= utf8.RuneSelf {
			r, size = utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				return fmt.Errorf("is not valid UTF-8 at byte %d", i)
			}
		}
		if (r < 0x20 && !(text && (r == '\t' || r == '\n'))) || (r >= 0x7f && r <= 0x9f) {
			return fmt.Errorf("has a control character at byte %d", i)
		}
		i += size
	}
	return nil
}

// SameServer reports whether two server names name the same server. DNS
// names are case-insensitive (RFC 4343), so the host part is compared without
// regard to ASCII case; the port, when present, must match exactly. IP
// literals compare as written (their hex digits are case-insensitive too).
func SameServer(a, b string) bool {
	return strings.EqualFold(a, b)
}
