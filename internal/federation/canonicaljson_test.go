package federation

import (
	"errors"
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
		{"trailing garbage", `{}x`, "invalid character"},
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

func TestCheckSurrogateEscapesIgnoresEscapedQuotes(t *testing.T) {
	// The \" must not end the string for the scanner, or the following
	// \ud800 would be missed.
	require.Error(t, checkSurrogateEscapes([]byte(`["a\"\ud800"]`)))
	// A backslash-escaped backslash followed by "ud800" is plain text.
	require.NoError(t, checkSurrogateEscapes([]byte(`["\\ud800"]`)))
	got, err := CanonicalJSON([]byte(`["\\ud800"]`))
	require.NoError(t, err)
	require.Equal(t, `["\\ud800"]`, string(got))
}
