package inbox

import (
	"strings"
	"testing"

	"github.com/todeviced/todeviced/internal/matrix"
)

// TestDecodeSendBodyDepth: bodies nested beyond the limits are refused with
// M_BAD_JSON before anything is stored; seven million open brackets once
// overflowed the decoder's stack and killed the process.
func TestDecodeSendBodyDepth(t *testing.T) {
	for name, body := range map[string]string{
		"7M open brackets":         `{"x":` + strings.Repeat("[", 7_000_000),
		"1M closed levels":         `{"x":` + strings.Repeat("[", 1_000_000) + strings.Repeat("]", 1_000_000) + `,"messages":{}}`,
		"10 000-deep content":      `{"messages":{"@a:b":{"D":{"x":` + strings.Repeat("[", 10_000) + strings.Repeat("]", 10_000) + `}}}}`,
		"content one level deeper": `{"messages":{"@a:b":{"D":{"x":` + strings.Repeat("[", matrix.MaxContentDepth) + strings.Repeat("]", matrix.MaxContentDepth) + `}}}}`,
	} {
		_, err := DecodeSendBody([]byte(body))
		e, ok := matrix.AsError(err)
		if !ok || e.Code != matrix.BadJSON || !strings.Contains(e.Message, "levels deep") {
			t.Errorf("%s: got %v, want M_BAD_JSON naming the depth", name, err)
		}
	}
	okBody := `{"messages":{"@a:b":{"D":{"x":` + strings.Repeat("[", matrix.MaxContentDepth-1) + strings.Repeat("]", matrix.MaxContentDepth-1) + `}}}}`
	if _, err := DecodeSendBody([]byte(okBody)); err != nil {
		t.Fatalf("content at the depth limit refused: %v", err)
	}
}

// TestDecodeSendBodyNULEscape: "\u0000" inside content is valid JSON and is
// kept as the six-character escape (content is stored as bytes on both
// backends, so it is storable and deliverable).
func TestDecodeSendBodyNULEscape(t *testing.T) {
	msgs, err := DecodeSendBody([]byte(`{"messages":{"@a:b":{"D":{"s":"a\u0000b"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(msgs["@a:b"]["D"]); got != `{"s":"a\u0000b"}` {
		t.Fatalf("content = %s", got)
	}
}
