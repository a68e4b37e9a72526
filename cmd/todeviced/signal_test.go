package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/testdb"
)

// buildBinary compiles todeviced the way a release does (static, no cgo).
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "todeviced")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// cleanEnv is the test's environment without TODEVICED_* settings, so only
// the flags given configure the binary.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// logLines collects a process's JSON log lines.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   bytes.Buffer
	added chan struct{}
}

func (l *logLines) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var m map[string]any
		_ = json.Unmarshal(sc.Bytes(), &m)
		l.mu.Lock()
		l.raw.Write(sc.Bytes())
		l.raw.WriteByte('\n')
		if m != nil {
			l.lines = append(l.lines, m)
		}
		l.mu.Unlock()
		select {
		case l.added <- struct{}{}:
		default:
		}
	}
}

// wait returns the first line with message msg.
func (l *logLines) wait(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		l.mu.Lock()
		for _, m := range l.lines {
			if m["msg"] == msg {
				l.mu.Unlock()
				return m
			}
		}
		l.mu.Unlock()
		select {
		case <-l.added:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %q log line; logs:\n%s", msg, l.String())
		}
	}
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raw.String()
}

// The real binary, sent SIGTERM while a long-poll waits, answers the
// long-poll (empty), drains and exits 0 on its own, well before the
// shutdown deadline.
func TestBinaryExitsCleanlyOnSIGTERM(t *testing.T) {
	dbURL := testdb.New(t)
	bin := buildBinary(t)

	add := exec.Command(bin, "device", "add", "@bob:localhost", "B1", "--database-url", dbURL, "--log-format", "json")
	add.Env = cleanEnv()
	out, err := add.Output()
	require.NoError(t, err)
	token := strings.TrimSpace(string(out))

	srv := exec.Command(bin, "serve", "--database-url", dbURL, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--log-format", "json", "--shutdown-timeout", "10m")
	srv.Env = cleanEnv()
	stderr, err := srv.StderrPipe()
	require.NoError(t, err)
	logs := &logLines{added: make(chan struct{}, 1)}
	require.NoError(t, srv.Start())
	exited := make(chan error, 1)
	go func() {
		logs.read(stderr)
		exited <- srv.Wait()
	}()
	t.Cleanup(func() { _ = srv.Process.Kill() }) // if the test fails before the exit

	serving := logs.wait(t, "todeviced serving")
	api := "http://" + serving["api_addr"].(string)
	metrics := "http://" + serving["metrics_addr"].(string)

	sync := func(ctx context.Context, since string, timeout time.Duration) (int, map[string]any) {
		q := url.Values{"timeout": {itoa(timeout.Milliseconds())}}
		if since != "" {
			q.Set("since", since)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/_matrix/client/v3/sync?"+q.Encode(), nil)
		if err != nil {
			return 0, nil
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, map[string]any{"err": err.Error()}
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	status, first := sync(context.Background(), "", 0)
	require.Equal(t, http.StatusOK, status, "%v", first)
	since := first["next_batch"].(string)

	type answer struct {
		status int
		body   map[string]any
	}
	polled := make(chan answer, 1)
	go func() {
		s, b := sync(context.Background(), since, 5*time.Minute)
		polled <- answer{s, b}
	}()
	active := regexp.MustCompile(`(?m)^todeviced_longpolls_active 1$`)
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(metrics + "/metrics")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if active.Match(body) {
			break
		}
		require.True(t, time.Now().Before(deadline), "the long-poll never started waiting")
		time.Sleep(10 * time.Millisecond)
	}

	require.NoError(t, srv.Process.Signal(syscall.SIGTERM))
	// A hang guard, not a timing assertion: the answer is due at once.
	select {
	case a := <-polled:
		require.Equal(t, http.StatusOK, a.status, "%v", a.body)
		require.Empty(t, a.body["to_device"].(map[string]any)["events"])
		require.Equal(t, since, a.body["next_batch"], "nothing was acknowledged beyond the since")
	case <-time.After(time.Minute):
		t.Fatalf("the long-poll was not answered at shutdown; logs:\n%s", logs)
	}
	select {
	case err := <-exited:
		require.NoError(t, err, "todeviced exits 0 after SIGTERM; logs:\n%s", logs)
	case <-time.After(time.Minute):
		t.Fatalf("todeviced did not exit after SIGTERM; logs:\n%s", logs)
	}
	logs.wait(t, "shutting down")
	require.NotContains(t, logs.String(), "shutdown deadline", "every request finished on its own, not cut off by --shutdown-timeout")
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
