package matrix

import "encoding/json"

// Writing JSON by hand, byte for byte as encoding/json writes it: the
// hot responses (a /sync answer) are appended field by field instead of
// going through json.Marshal's reflection, and stay identical to what it
// wrote. Identical means the same escapes: encoding/json escapes '<', '>'
// and '&' (and U+2028, U+2029) in strings and in raw values, replaces
// invalid UTF-8, and compacts raw values. The helpers copy what needs none
// of that, which is every Matrix id, token and stored content in practice,
// and hand anything else to encoding/json itself, so the rare case is
// right by construction.

// AppendJSONString appends s as json.Marshal writes a string.
func AppendJSONString(b []byte, s string) []byte {
	if plainString(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// JSONStringLen is len(AppendJSONString(nil, s)), without allocating for
// a plain string.
func JSONStringLen(s string) int {
	if plainString(s) {
		return len(s) + 2
	}
	q, _ := json.Marshal(s)
	return len(q)
}

// plainString reports whether encoding/json writes s as it is between two
// quotes: printable ASCII without '"', '\\', '<', '>' and '&'.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// AppendJSONValue appends the JSON value raw as json.Marshal writes a
// json.RawMessage: compacted, with '<', '>', '&', U+2028 and U+2029
// escaped; raw that is not valid JSON is an error, as there. Content
// stored by the door is compact and valid, and unless it holds one of
// those characters it is checked (CheckJSON's one pass, at most MaxDepth
// deep as every deliverable content is) and copied: encoding/json compacts
// through a function call per byte, which was most of the cost of writing
// a /sync answer.
func AppendJSONValue(b, raw []byte) ([]byte, error) {
	if verbatimJSON(raw) && CheckJSON(raw, MaxDepth) == nil {
		return append(b, raw...), nil
	}
	v, err := json.Marshal(json.RawMessage(raw))
	if err != nil {
		return b, err
	}
	return append(b, v...), nil
}

// verbatimJSON reports whether encoding/json would write raw, if it is
// valid JSON, as it is: no whitespace outside strings and none of the
// characters it escapes anywhere. It does not check that raw is valid.
func verbatimJSON(raw []byte) bool {
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !verbatimStop[c] {
			continue
		}
		switch c {
		case '"':
			inString = !inString
		case '\\':
			i++ // the escaped byte is not a quote that ends the string
		case ' ', '\t', '\n', '\r':
			if !inString {
				return false
			}
		case '<', '>', '&':
			return false
		case 0xe2:
			// U+2028 and U+2029 are E2 80 A8 and E2 80 A9.
			if i+2 < len(raw) && raw[i+1] == 0x80 && raw[i+2]&^1 == 0xa8 {
				return false
			}
		}
	}
	return true
}

// verbatimStop marks the bytes verbatimJSON looks at; a table lookup lets
// it pass over the others quickly.
var verbatimStop = func() (t [256]bool) {
	for _, c := range []byte("\"\\ \t\n\r<>&\xe2") {
		t[c] = true
	}
	return t
}()
