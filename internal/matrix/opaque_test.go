package matrix

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := map[Kind][]string{
		DeviceID:  {"PHONE", "a b", "Gerät", "x/y", strings.Repeat("d", MaxOpaqueIDLength)},
		EventType: {"m.room.encrypted", "org.example.custom_ev"},
		TxnID:     {"m1700000000000.0", "1", "~"},
		RoomID:    {"!abc:example.org", "!Hash64Only"},
		MessageID: {"0123456789abcdef"},
	}
	for kind, ss := range good {
		for _, s := range ss {
			if err := ValidateID(kind, s); err != nil {
				t.Errorf("ValidateID(%s, %q): unexpected %v", kind, s, err)
			}
		}
	}
	bad := map[Kind][]string{
		DeviceID:  {"", "X\x00", "a\nb", "a\x7f", "\xff", "a\u0085b", "bad\xc3", strings.Repeat("d", MaxOpaqueIDLength+1)},
		EventType: {"m.t\x00", "\xed\xa0\x80"},
		TxnID:     {"\t"},
		RoomID:    {"abc:example.org", "!\x00"},
	}
	for kind, ss := range bad {
		for _, s := range ss {
			if err := ValidateID(kind, s); err == nil {
				t.Errorf("ValidateID(%s, %q): expected an error", kind, s)
			}
		}
	}
}

func TestValidateText(t *testing.T) {
	for _, s := range []string{"", "Alice's phone", "line\nbreak\ttab", "Ünïcødé"} {
		if err := ValidateText(s); err != nil {
			t.Errorf("ValidateText(%q): %v", s, err)
		}
	}
	for _, s := range []string{"a\x00", "\x1b[31m", "\xff"} {
		if err := ValidateText(s); err == nil {
			t.Errorf("ValidateText(%q): expected an error", s)
		}
	}
}

func TestSameServer(t *testing.T) {
	if !SameServer("a.test", "A.TEST") || !SameServer("a.test:8448", "A.Test:8448") {
		t.Error("DNS names must compare without regard to case")
	}
	if SameServer("a.test", "a.test:8448") || SameServer("a.test", "b.test") {
		t.Error("different servers compared equal")
	}
}
