package matrix

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCanonicalJSONSpecExamples runs every input/output pair from the spec
// appendix "Canonical JSON" → "Examples".
func TestCanonicalJSONSpecExamples(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"empty object", `{}`, `{}`},
		{"two members", "{\n    \"one\": 1,\n    \"two\": \"Two\"\n}", `{"one":1,"two":"Two"}`},
		{"reordered with whitespace", "{\n    \"b\": \"2\",\n    \"a\": \"1\"\n}", `{"a":"1","b":"2"}`},
		{"reordered compact", `{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`},
		{
			"nested",
			`{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}`,
			`{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}`,
		},
		{"non-ASCII value", `{"a": "日本語"}`, `{"a":"日本語"}`},
		{"non-ASCII keys sorted by code point", `{"本": 2, "日": 1}`, `{"日":1,"本":2}`},
		{"unicode escape decoded", `{"a": "\u65E5"}`, `{"a":"日"}`},
		{"null", `{"a": null}`, `{"a":null}`},
		{"negative zero and exponent", `{"a": -0, "b": 1e10}`, `{"a":0,"b":10000000000}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalJSON([]byte(tc.in))
			require.NoError(t, err)
			require.Equal(t, tc.want, string(got))
		})
	}
}

func TestCanonicalJSONEdgeCases(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"top-level scalar", ` 42 `, `42`},
		{"top-level string", `"x"`, `"x"`},
		{"top-level array", `[ 1 , [ ] , { } , true , false , null ]`, `[1,[],{},true,false,null]`},
		{"max safe integer", `9007199254740991`, `9007199254740991`},
		{"min safe integer", `-9007199254740991`, `-9007199254740991`},
		{"integral fraction", `1.0`, `1`},
		{"integral exponent with fraction", `1.5e1`, `15`},
		{"capital exponent with plus", `12E+2`, `1200`},
		{"negative exponent still integral", `1200e-2`, `12`},
		{"zero spellings", `[0.0, -0.0, 0e99999, -0E-5]`, `[0,0,0,0]`},
		{"quote and backslash", `"a\"b\\c"`, `"a\"b\\c"`},
		{"short escapes", `"\b\f\n\r\t"`, `"\b\f\n\r\t"`},
		{"other controls use lowercase hex", `"\u0000\u0001\u001F\u000b"`, `"\u0000\u0001\u001f\u000b"`},
		{"redundant escapes removed", `"\/\u0041\u00e9"`, `"/Aé"`},
		{"html characters stay raw", `"<script>&amp;</script>"`, `"<script>&amp;</script>"`},
		{"DEL stays raw", "\"\x7f\"", "\"\x7f\""},
		{"line and paragraph separators stay raw", `"\u2028\u2029"`, "\"\u2028\u2029\""},
		{"surrogate pair escape", `"\ud83d\ude00"`, `"😀"`},
		// U+FF61 sorts before U+1F600 by code point, but after it in UTF-16
		// (0xD83D < 0xFF61); the spec wants code point order.
		{"code point not UTF-16 order", `{"😀":1,"｡":2,"a":3}`, `{"a":3,"｡":2,"😀":1}`},
		{"empty key", `{"":1,"a":{"":[]}}`, `{"":1,"a":{"":[]}}`},
		{"escaped keys", `{"\n":1,"\"":2}`, `{"\n":1,"\"":2}`},
		{"same key in different objects", `{"a":{"a":1},"b":{"a":2}}`, `{"a":{"a":1},"b":{"a":2}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalJSON([]byte(tc.in))
			require.NoError(t, err)
			require.Equal(t, tc.want, string(got))
			// Canonical output is a fixed point.
			again, err := CanonicalJSON(got)
			require.NoError(t, err)
			require.Equal(t, string(got), string(again))
		})
	}
}

func TestCanonicalJSONRejects(t *testing.T) {
	cases := []struct{ name, in, wantMsg string }{
		{"fraction", `{"a":1.5}`, "not an integer"},
		{"small exponent", `1e-3`, "not an integer"},
		{"too large", `9007199254740992`, "out of the canonical integer range"},
		{"too small", `-9007199254740992`, "out of the canonical integer range"},
		{"large exponent", `1e16`, "out of the canonical integer range"},
		{"huge exponent", `1e999999999`, "out of the canonical integer range"},
		{"huge integer", `123456789012345678901234567890`, "out of the canonical integer range"},
		{"duplicate key", `{"a":1,"a":1}`, `duplicate object key "a"`},
		{"nested duplicate key", `{"x":[{"b":1,"b":2}]}`, `duplicate object key "b"`},
		{"duplicate key via escape", `{"a":1,"\u0061":2}`, `duplicate object key "a"`},
		{"invalid UTF-8", "\"\xff\"", "not valid UTF-8"},
		{"lone high surrogate", `"\ud800"`, "unpaired UTF-16 surrogate"},
		{"lone low surrogate", `"\udc00x"`, "unpaired UTF-16 surrogate"},
		{"high surrogate followed by non-surrogate", `"\ud800\u0041"`, "unpaired UTF-16 surrogate"},
		{"trailing data", `{} {}`, "after the JSON value"},
		{"trailing garbage", `{}x`, "invalid character 'x' after the JSON value"},
		{"truncated", `{"a":`, "unexpected EOF"},
		{"empty input", ``, "unexpected EOF"},
		{"NaN", `NaN`, "invalid character"},
		{"leading plus", `+1`, "invalid character"},
		{"single quotes", `{'a':1}`, "invalid character"},
		{"too deep", strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1), "nesting deeper"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalJSON([]byte(tc.in))
			require.Error(t, err, "got %s", got)
			require.True(t, errors.Is(err, ErrNotCanonicalizable), "error %v should wrap ErrNotCanonicalizable", err)
			require.Contains(t, err.Error(), tc.wantMsg)
		})
	}
}

func TestCanonicalJSONMaxDepthAccepted(t *testing.T) {
	in := strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth)
	got, err := CanonicalJSON([]byte(in))
	require.NoError(t, err)
	require.Equal(t, in, string(got))
}

func TestSurrogateEscapesAfterEscapedQuotes(t *testing.T) {
	// The \" must not end the string for the parser, or the following
	// \ud800 would be missed.
	_, err := CanonicalJSON([]byte(`["a\"\ud800"]`))
	require.ErrorIs(t, err, ErrNotCanonicalizable)
	// A backslash-escaped backslash followed by "ud800" is plain text.
	got, err := CanonicalJSON([]byte(`["\\ud800"]`))
	require.NoError(t, err)
	require.Equal(t, `["\\ud800"]`, string(got))
}

// FuzzCanonicalJSON checks the canonicalizer against encoding/json: whatever
// it accepts is valid JSON, means the same as its input, is its own
// canonical form, and whatever encoding/json rejects it rejects too.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `{"b":1,"a":[true,false,null,"x\"y\u00e9\ud83d\ude00"]}`, `{"a":{"c":1,"b":2}}`,
		`-0`, `1e10`, `1.0`, `"\u0000\u001f\/"`, `{"\u0061":1}`, ` [ 1 , 2 ] `, `{"a":1,"a":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := CanonicalJSON(in)
		if !json.Valid(in) {
			if err == nil {
				t.Fatalf("accepted invalid JSON %q as %q", in, out)
			}
			return
		}
		if err != nil {
			return // numbers outside the canonical range, duplicate keys, surrogates
		}
		if !json.Valid(out) {
			t.Fatalf("produced invalid JSON %q from %q", out, in)
		}
		again, err := CanonicalJSON(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", in, out, again, err)
		}
		var a, b any
		da := json.NewDecoder(bytes.NewReader(in))
		da.UseNumber()
		db := json.NewDecoder(bytes.NewReader(out))
		db.UseNumber()
		if da.Decode(&a) != nil || db.Decode(&b) != nil {
			t.Fatalf("decoding %q or %q failed", in, out)
		}
		if !sameJSON(a, b) {
			t.Fatalf("meaning changed: %q -> %q", in, out)
		}
	})
}

// sameJSON compares decoded values, numbers by integer value.
func sameJSON(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		bx, _ := new(big.Float).SetString(string(x))
		by, _ := new(big.Float).SetString(string(y))
		return bx != nil && by != nil && bx.Cmp(by) == 0
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !sameJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

// BenchmarkCanonicalJSON canonicalizes a federation transaction of 100
// to-device EDUs of about 600 bytes each, with keys out of order.
func BenchmarkCanonicalJSON(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteString(`{"origin":"a.example","pdus":[],"edus":[`)
	for i := range 100 {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"edu_type":"m.direct_to_device","content":{"type":"m.room.encrypted","sender":"@alice:a.example","message_id":"%032d","messages":{"@bob:b.example":{"DEV%d":{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"abc","ciphertext":{"k":{"type":0,"body":"%s"}}}}}}}`, i, i, strings.Repeat("Qm9keQ", 80))
	}
	buf.WriteString(`],"origin_server_ts":1700000000000}`)
	in := buf.Bytes()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := CanonicalJSON(in); err != nil {
			b.Fatal(err)
		}
	}
}
