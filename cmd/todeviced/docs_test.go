package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocsStayInTheRepository: README.md and docs/*.md link only to files a
// clone has (no ../shared/…), the design document exists, the README's
// walk-through needs no editing, LOAD.md's
// quickstart does not take the README server's ports, and the federation
// example keeps its state (databases, signing keys) outside the work tree.
func TestDocsStayInTheRepository(t *testing.T) {
	docs, err := filepath.Glob("../../docs/*.md")
	require.NoError(t, err)
	docs = append(docs, "../../README.md")
	require.FileExists(t, "../../docs/DESIGN.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, doc := range docs {
		raw, err := os.ReadFile(doc)
		require.NoError(t, err)
		text := string(raw)
		require.NotContains(t, text, "../shared", "%s points outside the repository", doc)
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") || strings.HasPrefix(target, "#") {
				continue
			}
			target, _, _ = strings.Cut(target, "#")
			path := filepath.Join(filepath.Dir(doc), target)
			abs, err := filepath.Abs(path)
			require.NoError(t, err)
			root, err := filepath.Abs("../..")
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(abs, root+string(filepath.Separator)), "%s links %s, outside the repository", doc, m[1])
			_, err = os.Stat(path)
			require.NoError(t, err, "%s links %s, which does not exist", doc, m[1])
		}
	}
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	require.Contains(t, string(readme), "](docs/DESIGN.md)")
	require.NotContains(t, string(readme), "since=NEXT_BATCH", "the walk-through pastes as is: next_batch comes from a variable")
	require.Contains(t, string(readme), "since=$NEXT_BATCH")

	load, err := os.ReadFile("../../docs/LOAD.md")
	require.NoError(t, err)
	for _, m := range regexp.MustCompile(`--(listen|metrics-listen|url) (\S+)`).FindAllStringSubmatch(string(load), -1) {
		require.NotContains(t, []string{"127.0.0.1:8008", "127.0.0.1:9108", "http://127.0.0.1:8008"}, m[2],
			"LOAD.md's commands must not take or target the README server's ports: %s", m[0])
	}
	fed, err := os.ReadFile("../../docs/FEDERATION.md")
	require.NoError(t, err)
	require.Contains(t, string(fed), "state=$(mktemp -d)")
	require.NotContains(t, string(fed), "mkdir -p a b", "example state stays out of the work tree")
	require.NotRegexp(t, `--signing-key [ab]/`, string(fed))
}
