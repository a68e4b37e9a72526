package server_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// documentedMetrics are the metric names of README.md's metrics tables.
func documentedMetrics(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	var out []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(todeviced_[a-z0-9_]+)` \\|").FindAllSubmatch(readme, -1) {
		out = append(out, string(m[1]))
	}
	require.NotEmpty(t, out, "README.md has metrics tables")
	return out
}

// TestEveryMetricIsDocumented: every todeviced_* family that live servers
// export (one exercised on localhost, one with federation on, on each
// backend) has a row in README.md's metrics tables, so a new metric cannot
// ship undocumented.
func TestEveryMetricIsDocumented(t *testing.T) {
	documented := documentedMetrics(t)
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		_, local := startWired(t, b)
		fed := prometheus.NewRegistry()
		cfg := servertest.Config(b.NewURL(t))
		cfg.ServerName = "a.test"
		cfg.SigningKey = filepath.Join(t.TempDir(), "a.key")
		servertest.Start(t, cfg, server.Options{Registry: fed})

		exported := map[string]bool{}
		for _, reg := range []*prometheus.Registry{local, fed} {
			mfs, err := reg.Gather()
			require.NoError(t, err)
			for _, mf := range mfs {
				if strings.HasPrefix(mf.GetName(), "todeviced_") {
					exported[mf.GetName()] = true
				}
			}
		}
		require.Contains(t, exported, "todeviced_federation_transactions_total", "the federation metrics are exported")
		var missing []string
		for name := range exported {
			if !slices.Contains(documented, name) {
				missing = append(missing, name)
			}
		}
		slices.Sort(missing)
		require.Empty(t, missing, "exported but not in README.md's metrics tables")
		for _, name := range documented {
			if !exported[name] {
				t.Logf("documented, not exported by these instances (a child appears on first use): %s", name)
			}
		}
	})
}
