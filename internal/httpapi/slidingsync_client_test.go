package httpapi_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/servertest"
)

// clientTestDir holds the real clients the tests run (package.json and its
// lockfile; node_modules is installed by `npm ci`, by .ci/run or here).
var clientTestDir = filepath.Join("..", "..", "clienttest")

var npmCI sync.Once

// needNode returns the node binary, with clienttest's packages installed,
// or skips the test saying why (fails under CI=true).
func needNode(t *testing.T) string {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI=true: the real-client test must run; .ci/run installs what it needs)", msg)
		}
		t.Skipf("%s; skipping the real-client test", msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		unavailable("node is not installed (matrix-js-sdk 37.5 needs node 20 or newer)")
	}
	out, err := exec.Command(node, "--version").Output()
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".", 2)[0])
	if err != nil || major < 20 {
		unavailable("node %q is older than 20, which matrix-js-sdk 37.5 needs", strings.TrimSpace(string(out)))
	}
	var installErr error
	npmCI.Do(func() {
		// node_modules is current when its marker holds the lockfile's
		// hash (written here and by .ci/run after npm ci).
		lock, err := os.ReadFile(filepath.Join(clientTestDir, "package-lock.json"))
		if err != nil {
			installErr = err
			return
		}
		sum := fmt.Sprintf("%x", sha256.Sum256(lock))
		marker := filepath.Join(clientTestDir, "node_modules", ".lockfile-sha256")
		if got, _ := os.ReadFile(marker); strings.TrimSpace(string(got)) == sum {
			return
		}
		cmd := exec.Command("npm", "ci", "--prefer-offline", "--no-audit", "--no-fund")
		cmd.Dir = clientTestDir
		if out, err := cmd.CombinedOutput(); err != nil {
			installErr = fmt.Errorf("npm ci in clienttest: %v\n%s", err, out)
			return
		}
		installErr = os.WriteFile(marker, []byte(sum+"\n"), 0o644)
	})
	if installErr != nil {
		unavailable("%v", installErr)
	}
	return node
}

// TestSlidingSyncRealClient runs matrix-js-sdk's SlidingSync, with the SDK's
// to-device extension, against todeviced on an extension-only connection:
// 150 pending messages arrive in pages of 100, a 151st wakes its long-poll,
// and its last since acknowledges them all, in the one inbox the classic
// /sync reads too.
func TestSlidingSyncRealClient(t *testing.T) {
	node := needNode(t)
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		sendN(t, in, 0, 150, "js")

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "slidingsync.mjs")
		cmd.Dir = clientTestDir
		cmd.Env = append(os.Environ(), "HS_URL="+in.URL, "USER_ID="+bob, "DEVICE_ID=B1", "ACCESS_TOKEN=tok-bob", "EXPECT=151")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			sc.Buffer(nil, 16<<20)
			for sc.Scan() {
				select {
				case lines <- sc.Text():
				case <-ctx.Done():
					return
				}
			}
		}()
		next := func() string {
			l, ok := <-lines
			require.True(t, ok, "the client ended early; stderr:\n%s", stderr.String())
			return l
		}
		var seen []string
		for l := next(); l != "WAITING 150"; l = next() {
			seen = append(seen, l)
		}
		require.Equal(t, []string{"WAITING 100"}, seen, "the first answer carried 100 events")
		// The client now long-polls; a new message wakes it.
		servertest.WaitFor(t, "the client's long-poll", func() bool { return in.Hub().Len() == 1 })
		sendN(t, in, 150, 151, "js")
		var result string
		for l := next(); ; l = next() {
			if r, ok := strings.CutPrefix(l, "RESULT "); ok {
				result = r
				break
			}
		}
		require.NoError(t, cmd.Wait(), "stderr:\n%s", stderr.String())

		var got struct {
			Events    []servertest.Event `json:"events"`
			NextBatch string             `json:"next_batch"`
			Requests  int                `json:"requests"`
		}
		require.NoError(t, json.Unmarshal([]byte(result), &got))
		require.Equal(t, seq(0, 151), ns(got.Events), "every message once, in order")
		require.Equal(t, servertest.Event{Sender: alice, Type: "m.test", Content: map[string]any{"n": float64(0)}}, got.Events[0])
		t.Logf("matrix-js-sdk received %d to-device events in %d sliding-sync requests", len(got.Events), got.Requests)

		// The client's last request acknowledged everything: the classic
		// /sync, from scratch or from the client's last next_batch, finds
		// the inbox empty.
		require.Empty(t, in.Sync(t, "tok-bob", "", 0).ToDevice.Events)
		require.Empty(t, in.Sync(t, "tok-bob", got.NextBatch, 0).ToDevice.Events)
	})
}
