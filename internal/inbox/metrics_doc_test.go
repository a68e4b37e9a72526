package inbox

import (
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// TestDropReasonsDocumented: README.md's metrics table lists every reason
// of todeviced_messages_dropped_total.
func TestDropReasonsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	row := regexp.MustCompile("(?m)^\\| `todeviced_messages_dropped_total` \\|.*$").Find(readme)
	require.NotNil(t, row, "README.md has a row for todeviced_messages_dropped_total")
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != "todeviced_messages_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					n++
					require.Contains(t, string(row), "`"+l.GetValue()+"`", "reason %q is not in README.md", l.GetValue())
				}
			}
		}
	}
	require.Equal(t, 12, n)
}
