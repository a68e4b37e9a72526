package matrix

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func nested(depth int) []byte {
	return []byte(strings.Repeat("[", depth) + strings.Repeat("]", depth))
}

func TestCheckDepth(t *testing.T) {
	for _, tc := range []struct {
		in    []byte
		limit int
		ok    bool
	}{
		{nested(64), 64, true},
		{nested(65), 64, false},
		{[]byte(`{"a":{"b":{"c":1}}}`), 3, true},
		{[]byte(`{"a":{"b":{"c":{}}}}`), 3, false},
		{[]byte(`{"a":{"b":{"c":{}}}}`), 4, true},
		{[]byte(`1`), 0, true},
		{[]byte(`[]`), 0, false},
	} {
		err := CheckJSON(tc.in, tc.limit)
		if tc.ok && err != nil {
			t.Errorf("CheckJSON(%.40s, %d): unexpected %v", tc.in, tc.limit, err)
		}
		if !tc.ok && !errors.Is(err, ErrTooDeep) {
			t.Errorf("CheckJSON(%.40s, %d) = %v, want ErrTooDeep", tc.in, tc.limit, err)
		}
	}
}

// TestCheckHuge is the crash of issue 11: seven million open brackets must
// be refused without recursion (a recursive checker overflows the stack).
func TestCheckHuge(t *testing.T) {
	b := append([]byte(`{"x":`), []byte(strings.Repeat("[", 7_000_000))...)
	if err := CheckJSON(b, MaxDepth); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("Check = %v, want ErrTooDeep", err)
	}
}

func TestCheckSyntax(t *testing.T) {
	bad := []string{
		``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `[1 2]`, `{"a" 1}`, `{1:2}`,
		`01`, `-`, `1.`, `1e`, `.5`, `+1`, `tru`, `nul`, `"abc`, `"\x"`, `"\u12"`, "\"a\x01\"",
		"\"\xff\"", `1 2`, `{}{}`, `[}`, `{]`, `NaN`, `Infinity`,
	}
	for _, s := range bad {
		if err := CheckJSON([]byte(s), MaxDepth); !errors.Is(err, ErrSyntax) {
			t.Errorf("CheckJSON(%q) = %v, want ErrSyntax", s, err)
		}
	}
	good := []string{
		`{}`, `[]`, `0`, `-0`, `1.5e-3`, `"\u0000"`, `"\ud800"`, `{"a":[1,{"b":null}],"c":true}`, " [ 1 , 2 ] ",
		`"é"`,
	}
	for _, s := range good {
		if err := CheckJSON([]byte(s), MaxDepth); err != nil {
			t.Errorf("CheckJSON(%q) = %v, want nil", s, err)
		}
	}
}

func TestCheckCanonical(t *testing.T) {
	for _, s := range []string{`{"a":1.5}`, `[1e3]`, `9007199254740992`, `-9007199254740992`, `{"x":[0,{"y":99999999999999999999}]}`, `1E2`} {
		var ne *NumberError
		if err := CheckCanonical([]byte(s)); !errors.As(err, &ne) {
			t.Errorf("CheckCanonical(%s) = %v, want a NumberError", s, err)
		}
	}
	for _, s := range []string{`{"a":1}`, `9007199254740991`, `-9007199254740991`, `{"s":"1.5"}`, `[0,-0,true,null]`} {
		if err := CheckCanonical([]byte(s)); err != nil {
			t.Errorf("CheckCanonical(%s) = %v, want nil", s, err)
		}
	}
}

func TestQuote(t *testing.T) {
	long := strings.Repeat("é", 100)
	q := Quote(long)
	if len(q) > MaxQuote+len("…") || !strings.HasSuffix(q, "…") || !strings.HasPrefix(long, strings.TrimSuffix(q, "…")) {
		t.Fatalf("Quote cut badly: %q", q)
	}
	if Quote("short") != "short" {
		t.Fatal("Quote changed a short string")
	}
}

// FuzzCheck compares Check with encoding/json: they agree on validity for
// every input within the depth limit, and Check never accepts a value deeper
// than the limit.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{`{}`, `[[[]]]`, `{"a":[1,2,{"b":"c"}]}`, `"\u0000"`, `1e5`, `{"a":1,}`, "\"\xff\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := CheckJSON(b, 8)
		if errors.Is(err, ErrTooDeep) {
			return
		}
		// Check also refuses invalid UTF-8, which json.Valid lets through.
		if (err == nil) != (json.Valid(b) && utf8.Valid(b)) {
			t.Fatalf("CheckJSON(%q) = %v but json.Valid = %v", b, err, json.Valid(b))
		}
		if err == nil {
			if d := depth(b); d > 8 {
				t.Fatalf("Check accepted depth %d > 8: %q", d, b)
			}
		}
	})
}

// depth measures nesting with encoding/json's tokenizer.
func depth(b []byte) int {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	d, maxD := 0, 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return maxD
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			d++
			maxD = max(maxD, d)
		case json.Delim('}'), json.Delim(']'):
			d--
		}
	}
}
