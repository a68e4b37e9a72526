// Package scripts holds the shell scripts of load runs and crash soaks; its
// test checks their log helpers against real log lines.
package scripts_test

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCountLogErrors: count_log_errors counts ERROR lines in the JSON logs
// todeviced writes when standard error is a file (as in load-run.sh and
// crash-soak.sh), and in text logs, and nothing else.
func TestCountLogErrors(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		log := slog.New(h)
		log.Error("request", "status", 500, "err", errors.New("database unreachable"))
		log.Warn("slow request", "note", "ERROR in a value is not a level")
		log.Info("request", "status", 200)
		log.Error("listener down")
	}
	file := filepath.Join(t.TempDir(), "server.log")
	require.NoError(t, os.WriteFile(file, buf.Bytes(), 0o600))

	out, err := exec.Command("bash", "-c", `. ./logs.sh && count_log_errors "$1"`, "bash", file).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "4", strings.TrimSpace(string(out)), "two ERROR lines in each format:\n%s", buf.String())

	empty := filepath.Join(t.TempDir(), "empty.log")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	out, err = exec.Command("bash", "-c", `. ./logs.sh && count_log_errors "$1"`, "bash", empty).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "0", strings.TrimSpace(string(out)))
}
