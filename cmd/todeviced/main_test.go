package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func parse(t *testing.T, args []string, e map[string]string) (server.Config, []string, error) {
	t.Helper()
	cfg := server.Defaults()
	var out bytes.Buffer
	fs := newFlagSet("todeviced", &cfg, &out)
	pos, err := parseArgs(fs, args, env(e))
	return cfg, pos, err
}

func TestEnvironmentFillsFlagsAndFlagsWin(t *testing.T) {
	cfg, pos, err := parse(t, []string{"add", "--listen", "0.0.0.0:1", "@a:x", "D", "--migrate=false"}, map[string]string{
		"TODEVICED_LISTEN":                  "1.2.3.4:5",
		"TODEVICED_SERVER_NAME":             "example.org",
		"TODEVICED_INBOX_MAX_AGE":           "48h",
		"TODEVICED_FEDERATION_DESTINATIONS": "a.test=http://127.0.0.1:1, b.test=http://127.0.0.1:2",
		"TODEVICED_LOG_LEVEL":               "debug",
	})
	require.NoError(t, err)
	require.Equal(t, []string{"add", "@a:x", "D"}, pos, "flags may stand anywhere among the arguments")
	require.Equal(t, "0.0.0.0:1", cfg.Listen, "a flag wins over its variable")
	require.Equal(t, "example.org", cfg.ServerName)
	require.Equal(t, 48*time.Hour, cfg.InboxMaxAge)
	require.False(t, cfg.Migrate)
	require.Equal(t, map[string]string{"a.test": "http://127.0.0.1:1", "b.test": "http://127.0.0.1:2"}, cfg.FederationDestinations)
	require.Equal(t, "DEBUG", cfg.LogLevel.String())
	require.Equal(t, server.DefaultMetricsListen, cfg.MetricsListen, "untouched settings keep their defaults")
}

func TestInvalidSettingsNameTheSetting(t *testing.T) {
	_, _, err := parse(t, nil, map[string]string{"TODEVICED_MIGRATE": "perhaps"})
	require.ErrorContains(t, err, "TODEVICED_MIGRATE")
	_, _, err = parse(t, nil, map[string]string{"TODEVICED_INBOX_MAX_AGE": "forever"})
	require.ErrorContains(t, err, "TODEVICED_INBOX_MAX_AGE")
	_, _, err = parse(t, []string{"--no-such-flag"}, nil)
	require.ErrorContains(t, err, "no-such-flag")

	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "--database-url", "mysql://x"}, &bytes.Buffer{}, &stderr, env(nil))
	require.Equal(t, 2, code)
	require.Contains(t, stderr.String(), "--database-url")
	stderr.Reset()
	code = run(context.Background(), []string{"--server-name", "bad name", "--database-url", "postgres://x"}, &bytes.Buffer{}, &stderr, env(nil))
	require.Equal(t, 2, code)
	require.Contains(t, stderr.String(), "--server-name")
	stderr.Reset()
	code = run(context.Background(), []string{"--txn-retention", "1h", "--database-url", "postgres://x"}, &bytes.Buffer{}, &stderr, env(nil))
	require.Equal(t, 2, code)
	require.Contains(t, stderr.String(), "--txn-retention")
}

// TestSendBurstDefault: with no flag and no variable, --send-burst is
// DefaultSendBurst (100), as --help and the README say; 0 made every send
// after the first of a second a 429 under --send-rate-limit.
func TestSendBurstDefault(t *testing.T) {
	cfg, _, err := parse(t, []string{"--send-rate-limit", "1"}, nil)
	require.NoError(t, err)
	require.Equal(t, server.DefaultSendBurst, cfg.SendBurst)
	require.Equal(t, 100, cfg.SendBurst)
	cfg, _, err = parse(t, nil, map[string]string{"TODEVICED_SEND_BURST": "7"})
	require.NoError(t, err)
	require.Equal(t, 7, cfg.SendBurst)

	var stderr bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"--help"}, &bytes.Buffer{}, &stderr, env(nil)))
	require.Contains(t, stderr.String(), "--send-burst  (TODEVICED_SEND_BURST, default 100)")
}

// TestPlaceholderSecretRefused: the internal API does not start with a
// well-known placeholder secret (docker-compose.yml once defaulted to
// change-me): whoever knows it could create devices and tokens.
func TestPlaceholderSecretRefused(t *testing.T) {
	for _, s := range []string{"change-me", "CHANGE-ME", " changeme ", "secret"} {
		var stderr bytes.Buffer
		code := run(context.Background(), []string{"serve", "--database-url", "sqlite:" + t.TempDir() + "/x.db", "--internal-secret", s},
			&bytes.Buffer{}, &stderr, env(nil))
		require.Equal(t, 2, code, "%q: %s", s, stderr.String())
		require.Contains(t, stderr.String(), "--internal-secret")
		require.Contains(t, stderr.String(), "placeholder")
	}
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "--database-url", "sqlite:x.db"}, &bytes.Buffer{}, &stderr,
		env(map[string]string{"TODEVICED_INTERNAL_SECRET": "change-me"}))
	require.Equal(t, 2, code, "from the environment too")
	require.Contains(t, stderr.String(), "placeholder")
	cfg := server.Defaults()
	cfg.InternalSecret = "9f1c3b7e2a"
	require.NoError(t, cfg.Validate())
	cfg.InternalSecret = ""
	require.NoError(t, cfg.Validate(), "no secret: the internal API is off")
}

// TestUnreachablePostgresNamesTheServer: when PostgreSQL cannot be
// reached, the first thing said is which server (host and port, never the
// password), not a failure of the migration library.
func TestUnreachablePostgresNamesTheServer(t *testing.T) {
	const url = "postgres://todeviced:hunter2@127.0.0.1:1/todeviced?sslmode=disable&connect_timeout=5"
	for _, args := range [][]string{
		{"serve", "--database-url", url},
		{"serve", "--database-url", url, "--migrate=false"},
		{"migrate", "--database-url", url},
		{"migrate", "status", "--database-url", url},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), args, &bytes.Buffer{}, &stderr, env(map[string]string{"TODEVICED_METRICS_LISTEN": "127.0.0.1:0", "TODEVICED_LISTEN": "127.0.0.1:0"}))
		require.Equal(t, 1, code, "%v: %s", args, stderr.String())
		msg := stderr.String()
		i := strings.Index(msg, "connecting to PostgreSQL at 127.0.0.1:1: ")
		require.GreaterOrEqual(t, i, 0, "%v: %s", args, msg)
		require.NotContains(t, msg, "applying migrations", "%v: the connection failed, not the migrations", args)
		require.NotContains(t, msg, "failed to initialize", "%v: not the migration library's words", args)
		require.NotContains(t, msg, "hunter2", "never the password")
	}
}

// TestEveryFlagIsDocumented: every flag --help lists has a row in
// README.md's configuration table with the same default, and the table
// names no flag that does not exist.
func TestEveryFlagIsDocumented(t *testing.T) {
	var help bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"--help"}, &bytes.Buffer{}, &help, env(nil)))
	flags := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^  --([a-z0-9-]+)  \(TODEVICED_[A-Z0-9_]+, default (.*)\)$`).FindAllStringSubmatch(help.String(), -1) {
		flags[m[1]] = m[2]
	}
	require.Greater(t, len(flags), 20, "--help lists the flags:\n%s", help.String())

	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	documented := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\| ([^|]*) \\|").FindAllStringSubmatch(string(readme), -1) {
		cell := strings.TrimSpace(m[2])
		switch {
		case strings.HasPrefix(cell, "none"):
			documented[m[1]] = "none"
		case strings.HasPrefix(cell, "`"):
			documented[m[1]] = strings.SplitN(cell, "`", 3)[1]
		default:
			documented[m[1]] = cell
		}
	}
	sameDefault := func(a, b string) bool {
		if a == b {
			return true
		}
		da, errA := time.ParseDuration(a)
		db, errB := time.ParseDuration(b)
		return errA == nil && errB == nil && da == db
	}
	for name, def := range flags {
		doc, ok := documented[name]
		if !ok {
			t.Errorf("--%s (default %s) has no row in README.md's configuration table", name, def)
			continue
		}
		if !sameDefault(def, doc) {
			t.Errorf("--%s: --help says default %q, README.md says %q", name, def, doc)
		}
	}
	for name := range documented {
		if _, ok := flags[name]; !ok {
			t.Errorf("README.md documents --%s, which todeviced does not have", name)
		}
	}
}

func TestSubcommands(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"version"}, &stdout, &stderr, env(nil)))
	require.True(t, strings.HasPrefix(stdout.String(), "todeviced "), stdout.String())

	require.Equal(t, 2, run(context.Background(), []string{"frobnicate"}, &stdout, &stderr, env(nil)))
	require.Contains(t, stderr.String(), "unknown command")
	require.Equal(t, 2, run(context.Background(), []string{"device", "remove", "@a:x", "D"}, &stdout, &stderr, env(nil)))
	require.Equal(t, 0, run(context.Background(), []string{"--help"}, &stdout, &stderr, env(nil)))
	require.Contains(t, stderr.String(), "TODEVICED_DATABASE_URL", "help names each variable")
}

func TestMigrateAndDeviceAdd(t *testing.T) {
	url := testdb.NewEmpty(t)
	e := env(map[string]string{"TODEVICED_DATABASE_URL": url, "TODEVICED_LOG_LEVEL": "error"})
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"migrate", "status"}, &stdout, &stderr, e), stderr.String())
	require.Contains(t, stdout.String(), "pending")
	stdout.Reset()
	require.Equal(t, 0, run(context.Background(), []string{"migrate"}, &stdout, &stderr, e), stderr.String())
	require.Contains(t, stdout.String(), "applied")
	stdout.Reset()
	require.Equal(t, 0, run(context.Background(), []string{"migrate", "status"}, &stdout, &stderr, e))
	require.NotContains(t, stdout.String(), "pending")

	stdout.Reset()
	require.Equal(t, 0, run(context.Background(), []string{"device", "add", "@alice:localhost", "PHONE"}, &stdout, &stderr, e), stderr.String())
	token := strings.TrimSpace(stdout.String())
	require.True(t, strings.HasPrefix(token, "tdv_"), token)
	require.Greater(t, len(token), 40)

	stderr.Reset()
	require.Equal(t, 1, run(context.Background(), []string{"device", "add", "@alice:elsewhere", "PHONE"}, &stdout, &stderr, e))
	require.Contains(t, stderr.String(), "not local")
}
