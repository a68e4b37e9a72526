package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/todeviced/todeviced/internal/servertest"
)

// FuzzKeys drives POST /keys/upload and /keys/claim with any body: never a
// 5xx, always valid JSON, and whatever was stored leaves alice's keys
// claimable and her /sync answering.
func FuzzKeys(f *testing.F) {
	a1 := servertest.NewE2EDevice(alice, "A1")
	seed := func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	f.Add(true, seed(map[string]any{"device_keys": a1.DeviceKeys(), "one_time_keys": a1.OneTimeKeys(0, 2), "fallback_keys": a1.FallbackKey("F")}))
	f.Add(true, seed(map[string]any{"one_time_keys": a1.OneTimeKeys(7, 1)}))
	f.Add(false, `{"one_time_keys":{"@alice:localhost":{"A1":"signed_curve25519"}},"timeout":0}`)
	f.Add(false, `{"one_time_keys":{"@carol:remote.test":{"C1":"signed_curve25519"}},"timeout":0}`)
	for _, c := range hostileCases() {
		if strings.Contains(c.path, "/keys/") && len(c.body) < 4096 {
			f.Add(strings.HasSuffix(c.path, "/upload"), c.body)
		}
	}
	in := fuzzInstance(f)
	f.Fuzz(func(t *testing.T, upload bool, body string) {
		path := claimPath
		if upload {
			path = uploadPath
		} else if strings.Contains(body, "remote") {
			return // a claim of a remote user would wait for federation
		}
		checkAnswer(t, path, in.Do(t, http.MethodPost, path, "tok-alice", body))
		r := in.Do(t, http.MethodPost, claimPath, "tok-bob", `{"one_time_keys":{"@alice:localhost":{"A1":"signed_curve25519"}}}`)
		if r.Status != http.StatusOK {
			t.Fatalf("claim after %s %q: %d %s", path, body, r.Status, r.Body)
		}
		if s := in.RawSync(t.Context(), t, "tok-alice", "", 0); s.Status != http.StatusOK {
			t.Fatalf("alice's sync after %s %q: %d %s", path, body, s.Status, s.Body)
		}
	})
}
