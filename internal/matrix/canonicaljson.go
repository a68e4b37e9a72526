package matrix

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting so that hostile input cannot make the encoder
// recurse without limit. Python-based homeservers fail somewhat below 1000
// levels, so nothing legitimate is deeper.
const maxJSONDepth = 1000

// ErrNotCanonicalizable is wrapped by every error CanonicalJSON returns for
// input that cannot be represented in canonical JSON (as opposed to I/O
// failures, which cannot happen for an in-memory input).
var ErrNotCanonicalizable = errors.New("JSON cannot be encoded canonically")

// CanonicalJSON re-encodes a single JSON value in the Matrix "canonical JSON"
// form (spec appendix "Canonical JSON"): UTF-8, no insignificant whitespace,
// object keys sorted by Unicode code point, integers only, and the shortest
// string escapes.
//
// Numbers are parsed exactly (never through float64). A number whose value is
// an integer in [-(2^53)+1, 2^53-1] is accepted however it is written and
// re-encoded as a plain integer: the spec's own examples turn -0 into 0 and
// 1e10 into 10000000000. Numbers with a fractional value (1.5, 1e-3) or
// outside that range are rejected, because there is no canonical form for
// them.
//
// Invalid UTF-8, unpaired UTF-16 surrogate escapes, duplicate object keys and
// trailing data are rejected too: each would let two parties read different
// content under one signature.
func CanonicalJSON(raw []byte) ([]byte, error) {
	return AppendCanonicalJSON(make([]byte, 0, len(raw)), raw)
}

// AppendCanonicalJSON is CanonicalJSON writing into out (appending), so that
// a caller can build a larger canonical document around raw in one buffer.
func AppendCanonicalJSON(out, raw []byte) ([]byte, error) {
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: input is not valid UTF-8", ErrNotCanonicalizable)
	}
	p := canonicalizer{in: raw, out: out}
	p.skipSpace()
	if err := p.value(0); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	p.skipSpace()
	if p.i != len(p.in) {
		return nil, fmt.Errorf("%w: invalid character %q after the JSON value at offset %d", ErrNotCanonicalizable, p.in[p.i], p.i)
	}
	return p.out, nil
}

// canonicalizer parses JSON and writes its canonical form in one pass over
// the bytes, without building a tree: signing and verifying federation
// transactions canonicalizes every message twice, so this is on the
// federation hot path (encoding/json's token API was a third of a
// federated send's CPU time).
type canonicalizer struct {
	in  []byte
	i   int
	out []byte
	// scratch holds object members while they are sorted.
	scratch []byte
}

var errUnexpectedEnd = io.ErrUnexpectedEOF

func (p *canonicalizer) skipSpace() {
	for p.i < len(p.in) {
		switch p.in[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *canonicalizer) value(depth int) error {
	if p.i >= len(p.in) {
		return errUnexpectedEnd
	}
	switch c := p.in[p.i]; {
	case c == '{':
		if depth >= maxJSONDepth {
			return fmt.Errorf("nesting deeper than %d levels", maxJSONDepth)
		}
		return p.object(depth + 1)
	case c == '[':
		if depth >= maxJSONDepth {
			return fmt.Errorf("nesting deeper than %d levels", maxJSONDepth)
		}
		return p.array(depth + 1)
	case c == '"':
		_, err := p.string(true)
		return err
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return p.unexpected("a value")
	}
}

func (p *canonicalizer) unexpected(want string) error {
	return fmt.Errorf("invalid character %q at offset %d, want %s", p.in[p.i], p.i, want)
}

func (p *canonicalizer) literal(lit string) error {
	if !bytes.HasPrefix(p.in[p.i:], []byte(lit)) {
		return fmt.Errorf("invalid literal at offset %d", p.i)
	}
	p.i += len(lit)
	p.out = append(p.out, lit...)
	return nil
}

// number validates a JSON number by the grammar and appends its canonical
// integer form.
func (p *canonicalizer) number() error {
	start := p.i
	if p.in[p.i] == '-' {
		p.i++
	}
	digits := func() int {
		n := 0
		for p.i < len(p.in) && p.in[p.i] >= '0' && p.in[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	intStart := p.i
	if n := digits(); n == 0 || (n > 1 && p.in[intStart] == '0') {
		return fmt.Errorf("invalid number at offset %d", start)
	}
	plain := true
	if p.i < len(p.in) && p.in[p.i] == '.' {
		p.i++
		plain = false
		if digits() == 0 {
			return fmt.Errorf("invalid number at offset %d", start)
		}
	}
	if p.i < len(p.in) && (p.in[p.i] == 'e' || p.in[p.i] == 'E') {
		p.i++
		plain = false
		if p.i < len(p.in) && (p.in[p.i] == '+' || p.in[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return fmt.Errorf("invalid number at offset %d", start)
		}
	}
	lit := p.in[start:p.i]
	if plain && len(lit) <= 16 {
		// A plain integer of at most 16 characters: canonical unless it is
		// out of range or a negative zero.
		n, err := strconv.ParseInt(string(lit), 10, 64)
		if err == nil && n <= MaxSafeInteger && n >= -MaxSafeInteger {
			if n == 0 {
				p.out = append(p.out, '0')
			} else {
				p.out = append(p.out, lit...)
			}
			return nil
		}
	}
	n, err := canonicalNumber(string(lit))
	if err != nil {
		return err
	}
	p.out = append(p.out, n...)
	return nil
}

// string parses a JSON string at p.i. With emit it appends the canonical
// encoding to p.out. It returns the decoded string only when the string held
// escapes (for object keys, which must be compared decoded); otherwise the
// caller can read the raw bytes, which are then the decoded text.
func (p *canonicalizer) string(emit bool) (decoded []byte, err error) {
	p.i++ // the opening quote
	start := p.i
	for p.i < len(p.in) {
		c := p.in[p.i]
		switch {
		case c == '"':
			if emit {
				// No escapes: a valid JSON string without backslashes holds
				// no quote, backslash or control character, so its raw form
				// is already canonical.
				p.out = append(p.out, '"')
				p.out = append(p.out, p.in[start:p.i]...)
				p.out = append(p.out, '"')
			}
			p.i++
			return nil, nil
		case c == '\\':
			return p.escapedString(start, emit)
		case c < 0x20:
			return nil, fmt.Errorf("control character in string at offset %d", p.i)
		}
		p.i++
	}
	return nil, errUnexpectedEnd
}

// escapedString finishes a string that holds escapes: it decodes it and
// re-encodes it canonically.
func (p *canonicalizer) escapedString(start int, emit bool) ([]byte, error) {
	buf := append([]byte(nil), p.in[start:p.i]...)
	for p.i < len(p.in) {
		c := p.in[p.i]
		switch {
		case c == '"':
			p.i++
			if emit {
				p.out = AppendCanonicalString(p.out, buf)
			}
			return buf, nil
		case c < 0x20:
			return nil, fmt.Errorf("control character in string at offset %d", p.i)
		case c != '\\':
			buf = append(buf, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.in) {
			return nil, errUnexpectedEnd
		}
		e := p.in[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := hex4(p.in, p.i)
			if !ok {
				return nil, fmt.Errorf("invalid \\u escape at offset %d", p.i-2)
			}
			p.i += 4
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return nil, fmt.Errorf("unpaired UTF-16 surrogate escape \\u%04x", r)
			case r >= 0xD800 && r <= 0xDBFF:
				lo, ok := rune(0), false
				if p.i+6 <= len(p.in) && p.in[p.i] == '\\' && p.in[p.i+1] == 'u' {
					lo, ok = hex4(p.in, p.i+2)
				}
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return nil, fmt.Errorf("unpaired UTF-16 surrogate escape \\u%04x", r)
				}
				p.i += 6
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return nil, fmt.Errorf("invalid escape \\%c at offset %d", e, p.i-2)
		}
	}
	return nil, errUnexpectedEnd
}

type objectMember struct {
	key        []byte // decoded
	start, end int    // the member's canonical bytes in p.out
}

func (p *canonicalizer) object(depth int) error {
	p.i++ // '{'
	p.out = append(p.out, '{')
	base := len(p.out)
	var members []objectMember
	sorted := true
	p.skipSpace()
	if p.i < len(p.in) && p.in[p.i] == '}' {
		p.i++
		p.out = append(p.out, '}')
		return nil
	}
	for {
		p.skipSpace()
		if p.i >= len(p.in) {
			return errUnexpectedEnd
		}
		if p.in[p.i] != '"' {
			return p.unexpected("an object key")
		}
		if len(members) > 0 {
			p.out = append(p.out, ',')
		}
		mstart := len(p.out)
		keyStart := p.i + 1
		decoded, err := p.string(true)
		if err != nil {
			return err
		}
		key := decoded
		if key == nil {
			key = p.in[keyStart : p.i-1]
		}
		p.skipSpace()
		if p.i >= len(p.in) {
			return errUnexpectedEnd
		}
		if p.in[p.i] != ':' {
			return p.unexpected("':'")
		}
		p.i++
		p.out = append(p.out, ':')
		p.skipSpace()
		if err := p.value(depth); err != nil {
			return err
		}
		if n := len(members); n > 0 {
			switch c := bytes.Compare(members[n-1].key, key); {
			case c == 0:
				return fmt.Errorf("duplicate object key %q", key)
			case c > 0:
				sorted = false
			}
		}
		members = append(members, objectMember{key: key, start: mstart, end: len(p.out)})
		more, err := p.next('}', "',' or '}'")
		if err != nil {
			return err
		}
		if !more {
			break
		}
	}
	if !sorted {
		if err := p.sortMembers(base, members); err != nil {
			return err
		}
	}
	p.out = append(p.out, '}')
	return nil
}

// sortMembers rewrites the members written since base in key order. Go
// compares bytes, and for valid UTF-8 byte order is exactly the code point
// order the spec asks for (unlike UTF-16 order, which differs above U+FFFF).
func (p *canonicalizer) sortMembers(base int, members []objectMember) error {
	// Each segment is "key":value; the commas between them are rewritten.
	slices.SortFunc(members, func(a, b objectMember) int { return bytes.Compare(a.key, b.key) })
	for i := 1; i < len(members); i++ {
		if bytes.Equal(members[i-1].key, members[i].key) {
			return fmt.Errorf("duplicate object key %q", members[i].key)
		}
	}
	p.scratch = p.scratch[:0]
	for i, m := range members {
		if i > 0 {
			p.scratch = append(p.scratch, ',')
		}
		p.scratch = append(p.scratch, p.out[m.start:m.end]...)
	}
	p.out = append(p.out[:base], p.scratch...)
	return nil
}

func (p *canonicalizer) array(depth int) error {
	p.i++ // '['
	p.out = append(p.out, '[')
	p.skipSpace()
	if p.i < len(p.in) && p.in[p.i] == ']' {
		p.i++
		p.out = append(p.out, ']')
		return nil
	}
	for n := 0; ; n++ {
		if n > 0 {
			p.out = append(p.out, ',')
		}
		p.skipSpace()
		if err := p.value(depth); err != nil {
			return err
		}
		more, err := p.next(']', "',' or ']'")
		if err != nil {
			return err
		}
		if !more {
			p.out = append(p.out, ']')
			return nil
		}
	}
}

// next reads what follows a member or element: a ',' (more to come) or the
// closing byte (done), after optional white space. want names both in
// errors.
func (p *canonicalizer) next(closing byte, want string) (more bool, err error) {
	p.skipSpace()
	if p.i >= len(p.in) {
		return false, errUnexpectedEnd
	}
	switch p.in[p.i] {
	case ',':
		p.i++
		return true, nil
	case closing:
		p.i++
		return false, nil
	}
	return false, p.unexpected(want)
}

// canonicalNumber turns a JSON number literal (already validated by the
// decoder's grammar) into its canonical integer form. It works on the decimal
// digits rather than converting to float64 or big.Rat: float64 would round
// large integers, and big.Rat would happily allocate gigabytes for "1e999999999".
func canonicalNumber(lit string) (string, error) {
	s := lit
	neg := false
	if strings.HasPrefix(s, "-") {
		neg = true
		s = s[1:]
	}
	mantissa, expPart, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, fracPart, _ := strings.Cut(mantissa, ".")
	digits := strings.TrimLeft(intPart+fracPart, "0")
	if digits == "" {
		// Any spelling of zero, including -0 and 0.0e5, is canonically 0.
		return "0", nil
	}
	exp := 0
	if hasExp {
		e, err := strconv.Atoi(expPart) // accepts a leading + or -
		if err != nil || e > 1000 || e < -1000 {
			return "", fmt.Errorf("number %s is out of the canonical integer range", lit)
		}
		exp = e
	}
	// The value is digits × 10^(exp - len(fracPart)). Trailing zeros of the
	// digits can be moved into the exponent.
	exp -= len(fracPart)
	trimmed := strings.TrimRight(digits, "0")
	exp += len(digits) - len(trimmed)
	digits = trimmed
	if exp < 0 {
		return "", fmt.Errorf("number %s is not an integer; canonical JSON allows integers only", lit)
	}
	if len(digits)+exp > len(strconv.Itoa(MaxSafeInteger)) {
		return "", fmt.Errorf("number %s is out of the canonical integer range", lit)
	}
	n, err := strconv.ParseInt(digits+strings.Repeat("0", exp), 10, 64)
	if err != nil || n > MaxSafeInteger {
		return "", fmt.Errorf("number %s is out of the canonical integer range", lit)
	}
	if neg {
		n = -n
	}
	return strconv.FormatInt(n, 10), nil
}

// AppendCanonicalString appends s as a JSON string with only the escapes the
// canonical grammar allows: quote, backslash and the C0 control characters.
// Everything else, including '<', '>', '&', U+2028, U+2029 and all non-ASCII
// text, is written as raw UTF-8 (encoding/json would escape those, which is
// why it cannot be used here).
func AppendCanonicalString(out []byte, s []byte) []byte {
	const hex = "0123456789abcdef"
	out = append(out, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		out = append(out, s[start:i]...)
		switch c {
		case '"':
			out = append(out, `\"`...)
		case '\\':
			out = append(out, `\\`...)
		case '\b':
			out = append(out, `\b`...)
		case '\f':
			out = append(out, `\f`...)
		case '\n':
			out = append(out, `\n`...)
		case '\r':
			out = append(out, `\r`...)
		case '\t':
			out = append(out, `\t`...)
		default:
			out = append(out, `\u00`...)
			out = append(out, hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	out = append(out, s[start:]...)
	return append(out, '"')
}

// hex4 decodes four hex digits at raw[at:].
func hex4(raw []byte, at int) (rune, bool) {
	if at+4 > len(raw) {
		return 0, false
	}
	var v rune
	for _, c := range raw[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			v = v<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
