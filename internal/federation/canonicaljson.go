package federation

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxSafeInteger is 2^53-1, the largest integer the Matrix canonical JSON
// encoding allows: beyond it IEEE doubles (which many JSON libraries use for
// every number) lose precision, so two servers could disagree on the bytes.
const maxSafeInteger = 1<<53 - 1

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
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: input is not valid UTF-8", ErrNotCanonicalizable)
	}
	// encoding/json silently replaces an unpaired surrogate escape such as
	// "\ud800" with U+FFFD, which would hide the problem, so look for them
	// before decoding.
	if err := checkSurrogateEscapes(raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}

	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out bytes.Buffer
	out.Grow(len(raw))
	if err := canonicalValue(dec, &out, 0); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("unexpected data after the JSON value: %v", tok)
		}
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	return out.Bytes(), nil
}

// canonicalValue reads the next value from dec and appends its canonical
// encoding to out.
func canonicalValue(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	return canonicalToken(dec, tok, out, depth)
}

func canonicalToken(dec *json.Decoder, tok json.Token, out *bytes.Buffer, depth int) error {
	switch v := tok.(type) {
	case nil:
		out.WriteString("null")
	case bool:
		if v {
			out.WriteString("true")
		} else {
			out.WriteString("false")
		}
	case json.Number:
		n, err := canonicalNumber(string(v))
		if err != nil {
			return err
		}
		out.WriteString(n)
	case string:
		writeCanonicalString(out, v)
	case json.Delim:
		if depth >= maxJSONDepth {
			return fmt.Errorf("nesting deeper than %d levels", maxJSONDepth)
		}
		switch v {
		case '{':
			return canonicalObject(dec, out, depth+1)
		case '[':
			return canonicalArray(dec, out, depth+1)
		default:
			// The decoder only hands out closing delimiters where they are
			// syntactically valid, which the loops below consume.
			return fmt.Errorf("unexpected %q", rune(v))
		}
	default:
		return fmt.Errorf("unexpected JSON token %T", tok)
	}
	return nil
}

func canonicalObject(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	type member struct {
		key   string
		value []byte
	}
	var members []member
	seen := make(map[string]struct{})
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("object key is %T, not a string", tok)
		}
		if _, dup := seen[key]; dup {
			return fmt.Errorf("duplicate object key %q", key)
		}
		seen[key] = struct{}{}
		var value bytes.Buffer
		if err := canonicalValue(dec, &value, depth); err != nil {
			return err
		}
		members = append(members, member{key: key, value: value.Bytes()})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return err
	}
	// Go compares strings bytewise, and for valid UTF-8 the byte order is
	// exactly the code point order the spec asks for (unlike UTF-16 order,
	// which differs above U+FFFF).
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		writeCanonicalString(out, m.key)
		out.WriteByte(':')
		out.Write(m.value)
	}
	out.WriteByte('}')
	return nil
}

func canonicalArray(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	out.WriteByte('[')
	for i := 0; dec.More(); i++ {
		if i > 0 {
			out.WriteByte(',')
		}
		if err := canonicalValue(dec, out, depth); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing ']'
		return err
	}
	out.WriteByte(']')
	return nil
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
	if len(digits)+exp > len(strconv.Itoa(maxSafeInteger)) {
		return "", fmt.Errorf("number %s is out of the canonical integer range", lit)
	}
	n, err := strconv.ParseInt(digits+strings.Repeat("0", exp), 10, 64)
	if err != nil || n > maxSafeInteger {
		return "", fmt.Errorf("number %s is out of the canonical integer range", lit)
	}
	if neg {
		n = -n
	}
	return strconv.FormatInt(n, 10), nil
}

// writeCanonicalString writes s as a JSON string with only the escapes the
// canonical grammar allows: quote, backslash and the C0 control characters.
// Everything else, including '<', '>', '&', U+2028, U+2029 and all non-ASCII
// text, is written as raw UTF-8 (encoding/json would escape those, which is
// why it cannot be used here).
func writeCanonicalString(out *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	out.WriteByte('"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		out.WriteString(s[start:i])
		switch c {
		case '"':
			out.WriteString(`\"`)
		case '\\':
			out.WriteString(`\\`)
		case '\b':
			out.WriteString(`\b`)
		case '\f':
			out.WriteString(`\f`)
		case '\n':
			out.WriteString(`\n`)
		case '\r':
			out.WriteString(`\r`)
		case '\t':
			out.WriteString(`\t`)
		default:
			out.WriteString(`\u00`)
			out.WriteByte(hex[c>>4])
			out.WriteByte(hex[c&0xf])
		}
		start = i + 1
	}
	out.WriteString(s[start:])
	out.WriteByte('"')
}

// checkSurrogateEscapes reports an error if a JSON string in raw contains a
// \u escape for a UTF-16 surrogate that is not part of a high+low pair. Such
// a string has no UTF-8 representation. raw need not be valid JSON: syntax
// errors are left for the decoder to report.
func checkSurrogateEscapes(raw []byte) error {
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(raw) {
				return nil
			}
			if raw[i+1] != 'u' {
				i++ // skip the escaped character, which may be a quote
				continue
			}
			r, ok := hex4(raw, i+2)
			if !ok {
				return nil // malformed escape: the decoder reports it
			}
			i += 5
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return fmt.Errorf("unpaired UTF-16 surrogate escape \\u%04x", r)
			case r >= 0xD800 && r <= 0xDBFF:
				if i+6 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					if lo, ok := hex4(raw, i+3); ok && lo >= 0xDC00 && lo <= 0xDFFF {
						i += 6
						continue
					}
				}
				return fmt.Errorf("unpaired UTF-16 surrogate escape \\u%04x", r)
			}
		}
	}
	return nil
}

// hex4 decodes four hex digits at raw[at:].
func hex4(raw []byte, at int) (rune, bool) {
	if at+4 > len(raw) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(raw[at:at+4]), 16, 16)
	if err != nil {
		return 0, false
	}
	return rune(v), true
}
