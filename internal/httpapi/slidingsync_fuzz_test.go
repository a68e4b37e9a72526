package httpapi_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/todeviced/todeviced/internal/httpapi"
)

// FuzzSlidingSync sends any pos and body to the sliding-sync route: never a
// 5xx, always JSON, errors that quote only a prefix (DESIGN invariants
// 10, 12), and bob can still sync afterwards.
func FuzzSlidingSync(f *testing.F) {
	in := fuzzInstance(f)
	first := rawSS(f.Context(), f, in, "tok-bob", "", 0, ssBody(true, "", 100, true))
	if first.Status != http.StatusOK {
		f.Fatalf("seed request: %d %s", first.Status, first.Body)
	}
	pos, _ := first.JSON(f)["pos"].(string)
	tok := in.Sync(f, "tok-bob", "", 0).NextBatch
	for _, c := range []struct{ pos, body string }{
		{"", `{}`},
		{pos, `{"lists":{},"extensions":{"to_device":{"enabled":true,"since":"` + tok + `","limit":100},"e2ee":{"enabled":true}}}`},
		{pos, `{"conn_id":"encryption","extensions":{"to_device":{"enabled":true,"since":"x_1_2_3"}}}`},
		{pos + "0", `{"extensions":{"e2ee":{"enabled":null},"to_device":{"limit":-1,"enabled":true}}}`},
		{"a_1_2_3", `{"lists":{"l":{"ranges":[[0,1]]}}}`},
		{"", `{"room_subscriptions":{"!r:x":{}},"extensions":{"typing":{"enabled":true}}}`},
		{"", `{"extensions":{"to_device":{"enabled":true,"limit":1e400}}}`},
		{"", `[`},
	} {
		f.Add(c.pos, c.body)
	}
	f.Fuzz(func(t *testing.T, pos, body string) {
		q := url.Values{"timeout": {"0"}} // never a long-poll: the fuzzer would wait on it
		if pos != "" {
			q.Set("pos", pos)
		}
		r := in.Do(t, http.MethodPost, httpapi.SlidingSyncPath+"?"+q.Encode(), "tok-bob", body)
		checkAnswer(t, "sliding sync", r)
		if s := in.RawSync(t.Context(), t, "tok-bob", "", 0); s.Status != http.StatusOK {
			t.Fatalf("bob's sync after sliding sync %q %q: %d %s", pos, body, s.Status, s.Body)
		}
	})
}
