package httpapi

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/todeviced/todeviced/internal/inbox"
)

// requireLikeMarshal checks that an appender writes what json.Marshal
// writes, or fails where it fails.
func requireLikeMarshal(t *testing.T, v jsonAppender) {
	t.Helper()
	want, wantErr := json.Marshal(v)
	got, err := v.appendJSON([]byte{})
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("appendJSON error %v, json.Marshal %v", err, wantErr)
	}
	if err == nil && string(got) != string(want) {
		t.Fatalf("appendJSON:\n%s\njson.Marshal:\n%s", got, want)
	}
}

// TestAppenders: every answer with an appendJSON writes exactly what
// json.Marshal writes for it, for empty, nil, hostile and ordinary values.
// A field added to syncBody without its appender fails the field count.
func TestAppenders(t *testing.T) {
	if n := reflect.TypeFor[syncBody]().NumField(); n != 8 {
		t.Fatalf("syncBody has %d fields; syncBody.appendJSON writes 8: teach it the new ones", n)
	}
	if n := reflect.TypeFor[inbox.Event]().NumField(); n != 3 {
		t.Fatalf("inbox.Event has %d fields; appendEvents writes 3", n)
	}
	fallback := []string{"signed_curve25519", "<x>"}
	var nilFallback []string
	events := []inbox.Event{
		{Sender: "@alice:localhost", Type: "m.room.encrypted", Content: json.RawMessage(`{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":{"k":{"type":0,"body":"AbC+/="}}}`)},
		{Sender: "@a<b&c>:x", Type: "m.\u2028", Content: json.RawMessage(`{ "spaced" : [1, 2], "html": "<&>", "u": "\u2028" }`)},
		{Sender: "\xff", Type: "\x01", Content: json.RawMessage(`{"s":"tab\there"}`)},
		{Content: nil},
	}
	for name, body := range map[string]syncBody{
		"zero":  {},
		"empty": {NextBatch: "e_1_0_0_0", ToDevice: toDeviceBody{Events: []inbox.Event{}}, AccountData: emptyEvents{Events: []struct{}{}}, Presence: emptyEvents{Events: []struct{}{}}},
		"full": {
			NextBatch: "E<1>_2_3_4_5", ToDevice: toDeviceBody{Events: events},
			DeviceLists: &deviceListsBody{Changed: []string{"@a:x", "@b\"c:y"}, Left: []string{}},
			AccountData: emptyEvents{Events: []struct{}{{}, {}}}, Presence: emptyEvents{Events: []struct{}{}},
			OneTimeKeysCount:   map[string]int{"signed_curve25519": 50, "curve25519": -1, "<b>": 0, "a": 1 << 40},
			UnusedFallbackKeys: &fallback,
		},
		"nil lists":        {DeviceLists: &deviceListsBody{}, UnusedFallbackKeys: &nilFallback, OneTimeKeysCount: map[string]int{}},
		"many key kinds":   {OneTimeKeysCount: map[string]int{"k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5, "k6": 6, "k7": 7, "k8": 8, "k9": 9, "k0": 0}},
		"invalid content":  {ToDevice: toDeviceBody{Events: []inbox.Event{{Content: json.RawMessage(`{"a":`)}}}},
		"empty content":    {ToDevice: toDeviceBody{Events: []inbox.Event{{Content: json.RawMessage(``)}}}},
		"deep content":     {ToDevice: toDeviceBody{Events: []inbox.Event{{Content: json.RawMessage(deepJSON(100))}}}},
		"too deep content": {ToDevice: toDeviceBody{Events: []inbox.Event{{Content: json.RawMessage(deepJSON(10_001))}}}},
	} {
		t.Run(name, func(t *testing.T) { requireLikeMarshal(t, body) })
	}
}

func deepJSON(n int) string {
	b := make([]byte, 0, 2*n)
	for range n {
		b = append(b, '[')
	}
	for range n {
		b = append(b, ']')
	}
	return string(b)
}

// FuzzSyncBodyEncoding compares a /sync answer's appender with
// json.Marshal for any strings and content.
func FuzzSyncBodyEncoding(f *testing.F) {
	f.Add("e_1_2_3_4", "@a:b", "m.t", []byte(`{"k":[1,{"x":null}]}`), "@c:d", "curve")
	f.Add("<&>", "\xff", "\u2028", []byte(` { "a" : "<" } `), "\x00", "")
	f.Add("", "", "", []byte(`{"a":`), "", "k")
	f.Fuzz(func(t *testing.T, next, sender, typ string, content []byte, user, key string) {
		fallback := []string{key}
		requireLikeMarshal(t, syncBody{
			NextBatch:          next,
			ToDevice:           toDeviceBody{Events: []inbox.Event{{Sender: sender, Type: typ, Content: content}}},
			DeviceLists:        &deviceListsBody{Changed: []string{user}, Left: []string{}},
			AccountData:        emptyEvents{Events: []struct{}{}},
			Presence:           emptyEvents{Events: []struct{}{}},
			OneTimeKeysCount:   map[string]int{key: len(content), "signed_curve25519": 1},
			UnusedFallbackKeys: &fallback,
		})
	})
}
