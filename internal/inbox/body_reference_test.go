package inbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/todeviced/todeviced/internal/matrix"
)

// decodeSendBodyReference is the straightforward encoding/json version of
// DecodeSendBody, kept as the oracle of its differential fuzz test. It checks the shape of a sendToDevice body and returns its
// messages. Every error is a Matrix error: M_NOT_JSON for what is not JSON,
// M_BAD_JSON for the wrong shape, M_MISSING_PARAM when "messages" is absent.
func decodeSendBodyReference(body []byte) (Messages, error) {
	if !utf8.Valid(body) {
		return nil, matrix.Errorf(matrix.NotJSON, "Content not JSON.")
	}
	if err := matrix.CheckJSON(body, matrix.MaxDepth); errors.Is(err, matrix.ErrTooDeep) {
		return nil, matrix.Errorf(matrix.BadJSON, "The body is nested too deeply.")
	}
	if !utf8.Valid(body) || !json.Valid(body) {
		return nil, matrix.Errorf(matrix.NotJSON, "Content not JSON.")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return nil, matrix.Errorf(matrix.BadJSON, "The body must be a JSON object.")
	}
	raw, ok := top["messages"]
	if !ok {
		return nil, matrix.Errorf(matrix.MissingParam, "Missing 'messages'.")
	}
	var users map[string]json.RawMessage
	if err := json.Unmarshal(raw, &users); err != nil || users == nil {
		return nil, matrix.Errorf(matrix.BadJSON, "'messages' must be an object of user ids.")
	}
	out := make(Messages, len(users))
	for userID, rawDevices := range users {
		var devices map[string]json.RawMessage
		if err := json.Unmarshal(rawDevices, &devices); err != nil || devices == nil {
			return nil, matrix.Errorf(matrix.BadJSON, "'messages' for %q must be an object of device ids.", userID)
		}
		for deviceID, content := range devices {
			if errors.Is(matrix.CheckJSON(content, matrix.MaxContentDepth), matrix.ErrTooDeep) {
				return nil, matrix.Errorf(matrix.BadJSON, "The content for %q device %q is nested too deeply.", userID, deviceID)
			}
			if !isObject(content) {
				return nil, matrix.Errorf(matrix.BadJSON, "The content for %q device %q must be a JSON object.", userID, deviceID)
			}
			var buf bytes.Buffer
			if err := json.Compact(&buf, content); err != nil {
				return nil, matrix.Errorf(matrix.BadJSON, "The content for %q device %q is not valid JSON.", userID, deviceID)
			}
			devices[deviceID] = buf.Bytes()
		}
		out[userID] = devices
	}
	return out, nil
}

func isObject(raw json.RawMessage) bool {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c == '{'
	}
	return false
}

// FuzzDecodeSendBody checks the one-pass decoder against the reference: the
// same messages, or the same Matrix error code.
func FuzzDecodeSendBody(f *testing.F) {
	for _, s := range []string{
		`{"messages":{"@a:b":{"D":{"k":[1,2,{"x":null}]},"*":{}}}}`,
		`{"messages":{}}`, `{}`, `[]`, `null`, `{"messages":null}`, `{"messages":[1]}`,
		`{"messages":{"@a:b":"x"}}`, `{"messages":{"@a:b":{"D":"x"}}}`, `{"messages":{"@a:b":{"D":{}}}, "x": [`,
		`{"messages":{"@a:b":{"D":{"s":"\u00e9\n\"q\""}}}, "messages":{"@c:d":{"E":{ }}}}`,
		`{"me\u0073sages":{"@a\u003ab":{"D":{"n":-1.5e3}}}}`, ` { "messages" : { } } `, `{"messages":{}}x`,
		`{"messages":{"@a:b":{"D":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}}`,
		`{"messages":{"@a:b":{"D":{"x":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}}}}`,
		`{"x":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `,"messages":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, gotErr := DecodeSendBody(body)
		want, wantErr := decodeSendBodyReference(body)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("%q: got error %v, reference %v", body, gotErr, wantErr)
		}
		if gotErr != nil {
			g, _ := matrix.AsError(gotErr)
			w, _ := matrix.AsError(wantErr)
			// The decoder stops at the first content nested too deeply; the
			// reference checks the whole body's syntax first, so a syntax
			// error after such a content is the one difference allowed.
			deep := g.Code == matrix.BadJSON && strings.Contains(g.Message, "levels deep")
			if deep && w.Code == matrix.NotJSON {
				return
			}
			if g.Code != w.Code {
				t.Fatalf("%q: got %s, reference %s", body, g.Code, w.Code)
			}
			return
		}
		if len(got) != len(want) {
			t.Fatalf("%q: got %d users, reference %d", body, len(got), len(want))
		}
		for u, devs := range want {
			if len(got[u]) != len(devs) {
				t.Fatalf("%q: user %q: got %v, reference %v", body, u, got[u], devs)
			}
			for d, c := range devs {
				if !bytes.Equal(got[u][d], c) {
					t.Fatalf("%q: %q/%q: got %s, reference %s", body, u, d, got[u][d], c)
				}
			}
		}
	})
}
