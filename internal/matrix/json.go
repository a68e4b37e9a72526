package matrix

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Depth limits, in levels of nested objects and arrays ({} and [] count one
// level each; a scalar at the top is depth 0).
//
// Real to-device content is shallow: an Olm-encrypted m.room.encrypted is 3
// levels ({"ciphertext": {KEY: {"type", "body"}}}), a verification step or a
// secret request 2, device keys with signatures 3, a key backup session 4.
// MaxContentDepth leaves ten times that headroom. Content travels inside
// envelopes: a client's sendToDevice body puts it at level 3, a /sync answer
// at level 4, a federation transaction at level 6 (edus, EDU, content,
// messages, user, device). MaxDepth bounds whole request bodies and is large
// enough for MaxContentDepth content in the deepest envelope, and far below
// encoding/json's own limit of 10 000, so everything accepted is emitted.
const (
	MaxContentDepth = 32
	MaxDepth        = 64
)

// MaxSafeInteger is the largest integer canonical JSON carries
// (2^53 - 1, the spec's canonical JSON integer range).
const MaxSafeInteger = 1<<53 - 1

// Errors of Check. Syntax errors wrap ErrSyntax; too-deep values ErrTooDeep.
var (
	ErrSyntax  = errors.New("not valid JSON")
	ErrTooDeep = errors.New("nested too deeply")
)

// Check reports whether b is exactly one valid JSON value, of valid UTF-8,
// nested at most maxDepth levels. It does not allocate in proportion to the
// depth of b beyond maxDepth bytes.
func CheckJSON(b []byte, maxDepth int) error {
	_, err := scan(b, maxDepth, false)
	return err
}

// CheckCanonical reports the first value in the valid JSON b that canonical
// JSON cannot carry: a number with a fraction or exponent, or an integer
// outside ±(2^53 - 1). The error quotes the value (a short prefix of it).
// b must already have passed Check.
func CheckCanonical(b []byte) error {
	_, err := scan(b, MaxDepth*4, true)
	return err
}

// NumberError names a number canonical JSON cannot carry.
type NumberError struct{ Value string }

func (e *NumberError) Error() string {
	return fmt.Sprintf("number %s is not an integer in the range ±(2^53-1) that canonical JSON allows", e.Value)
}

// scan walks b once. The stack holds one byte per open container ('{' or
// '['), bounded by maxDepth.
func scan(b []byte, maxDepth int, canonical bool) (int, error) {
	var stackArr [64]byte
	stack := stackArr[:0]
	i := skipSpace(b, 0)
	// expectValue: a value must come next (after '[', ',' or ':', or at the
	// start).
	for {
		if i >= len(b) {
			return i, syntaxErr(i)
		}
		c := b[i]
		switch {
		case c == '{' || c == '[':
			if len(stack) >= maxDepth {
				return i, fmt.Errorf("%w: more than %d levels", ErrTooDeep, maxDepth)
			}
			stack = append(stack, c)
			i = skipSpace(b, i+1)
			if i < len(b) && (c == '{' && b[i] == '}' || c == '[' && b[i] == ']') {
				stack = stack[:len(stack)-1]
				i++
				goto afterValue
			}
			if c == '{' {
				var err error
				if i, err = objectKey(b, i); err != nil {
					return i, err
				}
			}
			continue
		case c == '"':
			var err error
			if i, err = skipString(b, i); err != nil {
				return i, err
			}
		case c == '-' || c >= '0' && c <= '9':
			start := i
			var err error
			if i, err = skipNumber(b, i); err != nil {
				return i, err
			}
			if canonical {
				if err := checkInteger(b[start:i]); err != nil {
					return i, err
				}
			}
		case c == 't':
			if !literal(b, i, "true") {
				return i, syntaxErr(i)
			}
			i += 4
		case c == 'f':
			if !literal(b, i, "false") {
				return i, syntaxErr(i)
			}
			i += 5
		case c == 'n':
			if !literal(b, i, "null") {
				return i, syntaxErr(i)
			}
			i += 4
		default:
			return i, syntaxErr(i)
		}
	afterValue:
		for {
			i = skipSpace(b, i)
			if len(stack) == 0 {
				if i != len(b) {
					return i, syntaxErr(i)
				}
				return i, nil
			}
			if i >= len(b) {
				return i, syntaxErr(i)
			}
			top := stack[len(stack)-1]
			switch {
			case b[i] == ',':
				i = skipSpace(b, i+1)
				if top == '{' {
					var err error
					if i, err = objectKey(b, i); err != nil {
						return i, err
					}
				}
			case top == '{' && b[i] == '}', top == '[' && b[i] == ']':
				stack = stack[:len(stack)-1]
				i++
				continue
			default:
				return i, syntaxErr(i)
			}
			break
		}
		i = skipSpace(b, i)
	}
}

func syntaxErr(i int) error { return fmt.Errorf("%w at byte %d", ErrSyntax, i) }

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// objectKey steps over `"key" :` at i, leaving i at the value.
func objectKey(b []byte, i int) (int, error) {
	if i >= len(b) || b[i] != '"' {
		return i, syntaxErr(i)
	}
	i, err := skipString(b, i)
	if err != nil {
		return i, err
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, syntaxErr(i)
	}
	return skipSpace(b, i+1), nil
}

func literal(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}

// plainInString marks the bytes a string holds that need no closer look:
// printable ASCII but the quote and the backslash. Looking them up in a
// table is what makes the loop over a long string (a ciphertext) fast.
var plainInString = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// skipString steps over the string starting at b[i] == '"', checking its
// escapes and that it is valid UTF-8.
func skipString(b []byte, i int) (int, error) {
	i++
	for i < len(b) {
		c := b[i]
		if plainInString[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			return i + 1, nil
		case c < 0x20:
			return i, syntaxErr(i)
		case c == '\\':
			if i+1 >= len(b) {
				return i, syntaxErr(i)
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return i, syntaxErr(i)
				}
				for _, h := range b[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return i, syntaxErr(i)
					}
				}
				i += 6
			default:
				return i, syntaxErr(i)
			}
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return i, fmt.Errorf("%w: invalid UTF-8 at byte %d", ErrSyntax, i)
			}
			i += size
		}
	}
	return i, syntaxErr(i)
}

// skipNumber steps over a JSON number (RFC 8259 grammar).
func skipNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return i, syntaxErr(start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return i, syntaxErr(start)
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return i, syntaxErr(start)
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	return i, nil
}

// checkInteger accepts only plain integers within canonical JSON's range.
func checkInteger(num []byte) error {
	for _, c := range num {
		if c == '.' || c == 'e' || c == 'E' {
			return &NumberError{Value: Quote(string(num))}
		}
	}
	n, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil || n > MaxSafeInteger || n < -MaxSafeInteger {
		return &NumberError{Value: Quote(string(num))}
	}
	return nil
}

// MaxQuote is how many bytes of client input an error message quotes.
const MaxQuote = 64

// Quote returns s for an error message: at most MaxQuote bytes of it (cut at
// a rune boundary, with "…" when cut), so a hostile megabyte is never echoed.
func Quote(s string) string { return Cut(s, MaxQuote) }

// Cut returns at most n bytes of s, cut at a rune boundary, with "…" added
// when anything was cut.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
