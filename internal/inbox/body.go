package inbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/todeviced/todeviced/internal/matrix"
)

// DecodeSendBody checks the shape of a sendToDevice body and returns its
// messages, each content compacted. Every error is a Matrix error: M_NOT_JSON
// for what is not JSON, M_BAD_JSON for the wrong shape, M_MISSING_PARAM when
// "messages" is absent. A body that is not JSON is M_NOT_JSON even when its
// shape is also wrong, so the whole body is checked before a shape error is
// reported. A content that was compact already is a slice of body: body
// must not change while the messages are in use.
//
// It reads the body once: encoding/json would validate it, then walk it once
// per level of maps, then again to compact each content, which made decoding
// the largest single cost of a big fan-out.
func DecodeSendBody(body []byte) (Messages, error) {
	if !utf8.Valid(body) {
		return nil, notJSON()
	}
	d := bodyDecoder{in: body}
	msgs, err := d.top()
	if err == nil {
		d.skipSpace()
		if d.i != len(d.in) {
			err = errSyntax
		}
	}
	if errors.Is(err, matrix.ErrTooDeep) {
		if d.deep == "" {
			d.deep = fmt.Sprintf("The body is nested more than %d levels deep.", matrix.MaxDepth)
		}
		return nil, matrix.Errorf(matrix.BadJSON, "%s", d.deep)
	}
	if err != nil {
		return nil, notJSON()
	}
	if d.shape != nil {
		return nil, d.shape
	}
	return msgs, nil
}

func notJSON() error { return matrix.Errorf(matrix.NotJSON, "Content not JSON.") }

var errSyntax = errors.New("JSON syntax error")

// bodyDecoder walks a sendToDevice body. Syntax errors end the walk; shape
// errors are remembered (the first one) while the walk goes on, so that a
// syntax error later in the body still wins.
type bodyDecoder struct {
	in    []byte
	i     int
	shape error
	deep  string // what was nested too deeply, for the error
	// spaced is set whenever skipSpace steps over whitespace: content()
	// clears it to learn whether a content is compact already.
	spaced bool
}

// errTooDeep ends the walk of a value nested deeper than its limit: message
// contents may nest matrix.MaxContentDepth levels, anything else in the body
// matrix.MaxDepth levels. The limit also bounds the decoder's recursion.
var errTooDeep = matrix.ErrTooDeep

func (d *bodyDecoder) badShape(format string, args ...any) {
	if d.shape == nil {
		d.shape = matrix.Errorf(matrix.BadJSON, format, args...)
	}
}

func (d *bodyDecoder) skipSpace() {
	i := d.i
	for i < len(d.in) {
		switch d.in[i] {
		case ' ', '\t', '\n', '\r':
			i++
			continue
		}
		break
	}
	if i != d.i {
		d.spaced = true
		d.i = i
	}
}

func (d *bodyDecoder) peek() byte {
	d.skipSpace()
	if d.i >= len(d.in) {
		return 0
	}
	return d.in[d.i]
}

func (d *bodyDecoder) expect(c byte) error {
	if d.peek() != c {
		return errSyntax
	}
	d.i++
	return nil
}

// members calls fn for each member of the object at d.i, positioned at the
// member's value.
func (d *bodyDecoder) members(fn func(key string) error) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.peek() == '}' {
		d.i++
		return nil
	}
	for {
		if d.peek() != '"' {
			return errSyntax
		}
		key, err := d.key()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		d.skipSpace()
		if err := fn(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil
		default:
			return errSyntax
		}
	}
}

func (d *bodyDecoder) top() (Messages, error) {
	if d.peek() != '{' {
		if _, err := d.value(nil, matrix.MaxDepth); err != nil {
			return nil, err
		}
		d.badShape("The body must be a JSON object.")
		return nil, nil
	}
	var msgs Messages
	found := false
	err := d.members(func(key string) error {
		if key != "messages" {
			_, err := d.value(nil, matrix.MaxDepth-1)
			return err
		}
		found = true
		if d.peek() != '{' {
			if _, err := d.value(nil, matrix.MaxDepth-1); err != nil {
				return err
			}
			d.badShape("'messages' must be an object of user ids.")
			return nil
		}
		// A repeated "messages" replaces the earlier one, as encoding/json
		// would have it.
		msgs = Messages{}
		return d.members(func(userID string) error {
			if d.peek() != '{' {
				if _, err := d.value(nil, matrix.MaxDepth-2); err != nil {
					return err
				}
				d.badShape("'messages' for %q must be an object of device ids.", matrix.Quote(userID))
				return nil
			}
			devices := map[string]json.RawMessage{}
			msgs[userID] = devices
			return d.members(func(deviceID string) error {
				isObj := d.peek() == '{'
				content, err := d.content()
				if err == errTooDeep && d.deep == "" {
					d.deep = fmt.Sprintf("The content for %q device %q is nested more than %d levels deep.",
						matrix.Quote(userID), matrix.Quote(deviceID), matrix.MaxContentDepth)
				}
				if err != nil {
					return err
				}
				if !isObj {
					d.badShape("The content for %q device %q must be a JSON object.", matrix.Quote(userID), matrix.Quote(deviceID))
					return nil
				}
				devices[deviceID] = content
				return nil
			})
		})
	})
	if err != nil {
		return nil, err
	}
	if !found {
		d.shape = matrix.Errorf(matrix.MissingParam, "Missing 'messages'.")
	}
	return msgs, nil
}

// content checks the message content at d.i and returns it compact. A
// content that is compact already, as clients send it, is returned as a
// slice of the body, its capacity clipped so that nothing appended to it
// can write into the body: no copy, no allocation. Only one with
// insignificant whitespace is walked a second time, into a buffer of its
// own size.
func (d *bodyDecoder) content() (json.RawMessage, error) {
	start := d.i
	d.spaced = false
	if _, err := d.value(nil, matrix.MaxContentDepth); err != nil {
		return nil, err
	}
	if !d.spaced {
		return d.in[start:d.i:d.i], nil
	}
	end := d.i
	d.i = start
	out, err := d.value(make([]byte, 0, end-start), matrix.MaxContentDepth)
	if err != nil {
		return nil, err // cannot happen: the same bytes passed above
	}
	return out, nil
}

// value checks the JSON value at d.i and, when out is not nil, appends it
// to out without insignificant whitespace. The value may nest at most limit
// levels of objects and arrays.
func (d *bodyDecoder) value(out []byte, limit int) ([]byte, error) {
	d.skipSpace()
	if d.i >= len(d.in) {
		return nil, errSyntax
	}
	switch c := d.in[d.i]; {
	case c == '{' || c == '[':
		if limit <= 0 {
			return nil, errTooDeep
		}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		d.i++
		if out != nil {
			out = append(out, c)
		}
		if d.peek() == end {
			d.i++
			if out != nil {
				out = append(out, end)
			}
			return out, nil
		}
		for n := 0; ; n++ {
			if n > 0 && out != nil {
				out = append(out, ',')
			}
			if c == '{' {
				if d.peek() != '"' {
					return nil, errSyntax
				}
				start := d.i
				if err := d.skipString(); err != nil {
					return nil, err
				}
				if out != nil {
					out = append(out, d.in[start:d.i]...)
					out = append(out, ':')
				}
				if err := d.expect(':'); err != nil {
					return nil, err
				}
			}
			var err error
			if out, err = d.value(out, limit-1); err != nil {
				return nil, err
			}
			switch d.peek() {
			case ',':
				d.i++
			case end:
				d.i++
				if out != nil {
					out = append(out, end)
				}
				return out, nil
			default:
				return nil, errSyntax
			}
		}
	case c == '"':
		start := d.i
		if err := d.skipString(); err != nil {
			return nil, err
		}
		if out != nil {
			out = append(out, d.in[start:d.i]...)
		}
		return out, nil
	default:
		start := d.i
		for d.i < len(d.in) {
			switch d.in[d.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				goto scalar
			}
			d.i++
		}
	scalar:
		lit := d.in[start:d.i]
		if !validScalar(lit) {
			return nil, errSyntax
		}
		if out != nil {
			out = append(out, lit...)
		}
		return out, nil
	}
}

// validScalar checks a number or literal token.
func validScalar(lit []byte) bool {
	switch string(lit) {
	case "true", "false", "null":
		return true
	}
	return len(lit) > 0 && (lit[0] == '-' || lit[0] >= '0' && lit[0] <= '9') && json.Valid(lit)
}

// skipString steps over the string at d.i, checking its escapes. It works
// on locals, not on d's fields: strings are most of a body's bytes (the
// ciphertexts), and the loop over them was the decoder's largest cost.
func (d *bodyDecoder) skipString() error {
	in, i := d.in, d.i+1
	for i < len(in) {
		c := in[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		switch {
		case c == '"':
			d.i = i + 1
			return nil
		case c < 0x20:
			return errSyntax
		}
		// A backslash.
		if i+1 >= len(in) {
			return errSyntax
		}
		switch in[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if i+6 > len(in) {
				return errSyntax
			}
			for _, h := range in[i+2 : i+6] {
				if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
					return errSyntax
				}
			}
			i += 6
		default:
			return errSyntax
		}
	}
	return errSyntax
}

// key reads an object key: the raw bytes when there are no escapes (the
// common case), decoded through encoding/json otherwise.
func (d *bodyDecoder) key() (string, error) {
	start := d.i
	if err := d.skipString(); err != nil {
		return "", err
	}
	raw := d.in[start:d.i]
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errSyntax
	}
	return s, nil
}
