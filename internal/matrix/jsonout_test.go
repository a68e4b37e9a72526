package matrix

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// jsonOutSamples are strings and raw values for which writing by hand must
// equal encoding/json: plain ones (the fast path) and every kind it
// rewrites.
var jsonOutSamples = []string{
	``, `@alice:example.org`, `{}`, `[]`, `null`, `1`, `-1.5e3`, `"s"`, `{"a":[1,{"b":null}],"c":true}`,
	`{"s":"a b\tc"}`, ` {"a":1}`, `{"a":1} `, `{ "a" : [ 1 , 2 ] }`, "{\"a\":\n1}",
	`{"h":"<b>&</b>"}`, `{"<":1}`, "{\"u\":\"\u2028\u2029\"}", "{\"u\":\"\xe2\x80\"}", "\"\xe2\x80\xa8",
	`{"e":"\u2028\"<"}`, `{"q":"\\"}`, `{"q":"\\\"<"}`, `{"q":"\"}`, "{\"x\":\"\xff\"}", "\"\x01\"",
	`{"a":1,}`, `{`, `[1 2]`, `01`, `"\x"`, "\"é\"", "a\x7fb", `<>&`, "\\", strings.Repeat("[", 70) + strings.Repeat("]", 70),
}

func TestAppendJSONStringLikeMarshal(t *testing.T) {
	for _, s := range jsonOutSamples {
		want, _ := json.Marshal(s)
		if got := AppendJSONString([]byte("x"), s); string(got) != "x"+string(want) {
			t.Errorf("AppendJSONString(%q) = %s, want x%s", s, got, want)
		}
		if n := JSONStringLen(s); n != len(want) {
			t.Errorf("JSONStringLen(%q) = %d, want %d", s, n, len(want))
		}
	}
}

func TestAppendJSONValueLikeMarshal(t *testing.T) {
	for _, s := range append(jsonOutSamples, "") {
		checkAppendJSONValue(t, []byte(s))
	}
	checkAppendJSONValue(t, nil) // a nil RawMessage is null
}

func checkAppendJSONValue(t *testing.T, raw []byte) {
	t.Helper()
	want, wantErr := json.Marshal(json.RawMessage(raw))
	got, err := AppendJSONValue([]byte("x"), raw)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("AppendJSONValue(%q): error %v, encoding/json %v", raw, err, wantErr)
	}
	if err == nil && string(got) != "x"+string(want) {
		t.Fatalf("AppendJSONValue(%q) = %s, want x%s", raw, got, want)
	}
}

// FuzzAppendJSON compares the hand-written JSON with encoding/json's for
// any string and any raw value.
func FuzzAppendJSON(f *testing.F) {
	for _, s := range jsonOutSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAppendJSONValue(t, b)
		want, _ := json.Marshal(string(b))
		if got := AppendJSONString(nil, string(b)); !bytes.Equal(got, want) {
			t.Fatalf("AppendJSONString(%q) = %s, want %s", b, got, want)
		}
	})
}
