package deploy_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// TestComposeIsLocalAndNeedsASecret: docker-compose.yml publishes every
// port on the loopback interface only (the internal API creates devices
// and tokens; Grafana has a trial password), and the internal secret has
// no default: compose refuses to start until one is set.
func TestComposeIsLocalAndNeedsASecret(t *testing.T) {
	raw, err := os.ReadFile("../docker-compose.yml")
	require.NoError(t, err)
	var compose struct {
		Services map[string]struct {
			Command []string `yaml:"command"`
			Ports   []string `yaml:"ports"`
		} `yaml:"services"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &compose))
	require.NotEmpty(t, compose.Services)
	published := 0
	for name, svc := range compose.Services {
		for _, p := range svc.Ports {
			published++
			require.True(t, strings.HasPrefix(p, "127.0.0.1:"), "%s publishes %q beyond the loopback interface", name, p)
		}
	}
	require.Positive(t, published)

	var secret string
	for _, arg := range compose.Services["todeviced"].Command {
		if v, ok := strings.CutPrefix(arg, "--internal-secret="); ok {
			secret = v
		}
	}
	require.True(t, strings.HasPrefix(secret, "${TODEVICED_INTERNAL_SECRET:?"),
		"the secret must be required (${VAR:?message}), never defaulted: %q", secret)
	require.NotContains(t, string(raw), "change-me}")
}
