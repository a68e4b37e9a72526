package httpapi_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/servertest"
)

// TestE2EERealClients runs two matrix-js-sdk clients with the SDK's Rust
// crypto against todeviced alone (clienttest/e2ee.mjs): they upload device
// and one-time keys, Alice queries Bob's keys and claims a one-time key,
// establishes an Olm session and sends an encrypted to-device message; Bob
// decrypts it and answers the same way, and Alice decrypts the answer.
// Nothing in between is todeviced's own code on the client side: what
// passes here is what a real end-to-end-encrypted client needs.
func TestE2EERealClients(t *testing.T) {
	node := needNode(t)
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "ADEV", "tok-alice")
		in.PutDevice(t, bob, "BDEV", "tok-bob")

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "e2ee.mjs", in.URL, "tok-alice", "tok-bob")
		cmd.Dir = clientTestDir
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		type step struct {
			Step    string         `json:"step"`
			User    string         `json:"user"`
			Sender  string         `json:"sender"`
			Content map[string]any `json:"content"`
			Wire    string         `json:"wire_type"`
			OTKs    map[string]int `json:"one_time_keys"`
			Done    bool           `json:"done"`
			Error   string         `json:"error"`
		}
		var steps []step
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "{") {
				continue
			}
			var s step
			require.NoError(t, json.Unmarshal([]byte(l), &s), "line %q", l)
			require.Empty(t, s.Error, "the client failed; stderr (last 4 KB):\n%s", tail(stderr.String(), 4096))
			steps = append(steps, s)
		}
		require.NoError(t, err, "stdout:\n%s\nstderr (last 4 KB):\n%s", out, tail(stderr.String(), 4096))
		require.NotEmpty(t, steps)
		require.True(t, steps[len(steps)-1].Done, "the script did not finish: %+v", steps)

		var decrypted []step
		for _, s := range steps {
			switch s.Step {
			case "uploaded":
				require.Positive(t, s.OTKs["signed_curve25519"], "%s's one-time keys are counted in /sync", s.User)
			case "sent":
				require.Equal(t, "m.room.encrypted", s.Wire, "what travels is Olm-encrypted")
			case "decrypted":
				decrypted = append(decrypted, s)
			}
		}
		require.Len(t, decrypted, 2)
		require.Equal(t, bob, decrypted[0].User)
		require.Equal(t, alice, decrypted[0].Sender)
		require.Equal(t, "from alice", decrypted[0].Content["secret"])
		require.Equal(t, alice, decrypted[1].User)
		require.Equal(t, bob, decrypted[1].Sender)
		require.Equal(t, "from bob", decrypted[1].Content["secret"])
	})
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
