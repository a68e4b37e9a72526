package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// TestAdminCLI runs `todeviced admin …` against a running server: tables by
// default, the API's JSON with --json, and a purge's effect.
func TestAdminCLI(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		const secret = "cli-admin-secret-1d2e"
		cfg := servertest.Config(b.NewURL(t))
		cfg.AdminSecret = secret
		in := servertest.Start(t, cfg, server.Options{})
		in.PutDevice(t, "@alice:localhost", "A1", "ta")
		in.PutDevice(t, "@bob:localhost", "B1", "tb")
		for _, id := range []string{"1", "2"} {
			in.Send(t, "ta", "m.spam", id, map[string]map[string]any{"@bob:localhost": {"B1": map[string]any{"n": 1}}})
		}
		in.Send(t, "ta", "m.room_key", "k", map[string]map[string]any{"@bob:localhost": {"B1": map[string]any{"n": 1}}})

		admin := func(wantCode int, args ...string) string {
			t.Helper()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"admin"}, args...), &stdout, &stderr,
				env(map[string]string{"TODEVICED_ADMIN_URL": in.URL, "TODEVICED_ADMIN_SECRET": secret, "TODEVICED_TYPE": "m.room_key"}))
			require.Equal(t, wantCode, code, "admin %v: %s%s", args, stdout.String(), stderr.String())
			return stdout.String() + stderr.String()
		}

		out := admin(0, "inbox", "@bob:localhost", "B1")
		require.Contains(t, out, "@bob:localhost B1: 3 pending")
		require.Regexp(t, `m\.spam\s+2`, out)
		require.Regexp(t, `@alice:localhost\s+3`, out)

		out = admin(0, "devices", "@bob:localhost")
		require.Regexp(t, `USER\s+DEVICE\s+PENDING\s+OLDEST`, out)
		require.Regexp(t, `@bob:localhost\s+B1\s+3\s+20`, out)

		var top struct {
			Inboxes []struct {
				UserID   string `json:"user_id"`
				DeviceID string `json:"device_id"`
				Count    int    `json:"count"`
			} `json:"inboxes"`
		}
		require.NoError(t, json.Unmarshal([]byte(admin(0, "--json", "top", "--limit", "5")), &top))
		require.Len(t, top.Inboxes, 1)
		require.Equal(t, 3, top.Inboxes[0].Count)

		require.Contains(t, admin(2, "purge", "@bob:localhost", "B1"), "one of --type, --sender or --all",
			"a purge of everything is asked for explicitly (TODEVICED_TYPE is not read)")
		require.Contains(t, admin(0, "purge", "@bob:localhost", "B1", "--type", "m.spam"), "purged 2 message(s)")
		require.Contains(t, admin(0, "inbox", "@bob:localhost", "B1"), "1 pending")
		require.Contains(t, admin(0, "purge", "--all", "@bob:localhost", "B1"), "purged 1 message(s)")

		require.Contains(t, admin(1, "inbox", "@bob:localhost", "NOPE"), "M_NOT_FOUND")
		require.Contains(t, admin(2, "frobnicate"), "Usage: todeviced admin")

		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"admin", "--admin-url", in.URL, "top"}, &stdout, &stderr, env(nil))
		require.Equal(t, 2, code)
		require.Contains(t, stderr.String(), "TODEVICED_ADMIN_SECRET")
		code = run(context.Background(), []string{"admin", "--admin-url", in.URL, "--admin-secret", "wrong", "top"}, &stdout, &stderr, env(nil))
		require.Equal(t, 1, code)
		require.True(t, strings.Contains(stderr.String(), "M_UNKNOWN_TOKEN"), stderr.String())
	})
}

// TestAdminSecretPlaceholderRefused: a placeholder admin secret, or the
// internal one again, keeps the server from starting.
func TestAdminSecretPlaceholderRefused(t *testing.T) {
	for _, args := range [][]string{
		{"--admin-secret", "change-me"},
		{"--admin-secret", " Secret "},
		{"--admin-secret", "9f1c3b7e2a", "--internal-secret", "9f1c3b7e2a"},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), append([]string{"serve", "--database-url", "sqlite:" + t.TempDir() + "/x.db"}, args...),
			&bytes.Buffer{}, &stderr, env(nil))
		require.Equal(t, 2, code, "%q: %s", args, stderr.String())
		require.Contains(t, stderr.String(), "--admin-secret")
	}
}

// TestAdminCLIDestinations: the federation commands against a federating
// server whose only peer never answers.
func TestAdminCLIDestinations(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		const secret = "cli-admin-secret-7a9b"
		cfg := servertest.Config(b.NewURL(t))
		cfg.AdminSecret = secret
		cfg.ServerName = "a.test"
		cfg.SigningKey = t.TempDir() + "/a.key"
		cfg.FederationDestinations = map[string]string{"remote.test": "http://127.0.0.1:1"}
		cfg.FederationBackoffMin, cfg.FederationBackoffMax = time.Hour, 2*time.Hour
		in := servertest.Start(t, cfg, server.Options{})
		in.PutDevice(t, "@alice:a.test", "A1", "ta")
		in.Send(t, "ta", "m.test", "1", map[string]map[string]any{"@x:remote.test": {"D": map[string]any{"n": 1}}})

		admin := func(args ...string) string {
			t.Helper()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"admin", "--admin-url", in.URL, "--admin-secret", secret}, args...), &stdout, &stderr, env(nil))
			require.Equal(t, 0, code, "admin %v: %s%s", args, stdout.String(), stderr.String())
			return stdout.String()
		}
		servertest.WaitFor(t, "the failed attempt", func() bool {
			return regexp.MustCompile(`remote\.test\s+1\s+20\S+ \(.*\)\s+1\s+20`).MatchString(admin("destinations"))
		})
		require.Regexp(t, `DESTINATION\s+QUEUED\s+OLDEST\s+FAILURES\s+RETRY\s+LEASE\s+TXN\s+ATTEMPTS\s+LAST STATUS`, admin("destinations"))
		require.Contains(t, admin("retry", "remote.test"), "remote.test: backoff ended, sending now")
		require.Contains(t, admin("retry", "never.test"), "never tried")
		require.Contains(t, admin("drop-queue", "remote.test"), "remote.test: dropped 1 EDU(s)")
		require.Contains(t, admin("--json", "destinations"), `"queued": 0`)
		require.Contains(t, admin("device-list", "@rita:remote.test"), "@rita:remote.test: not tracked")
		require.Contains(t, admin("resync", "@rita:remote.test"), "not tracked, nothing to resync")
	})
}
