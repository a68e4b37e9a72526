package federation_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestImports keeps federation's side of the layering (issue 13, item 2):
// the protocol toolkit knows no domain package, federation reaches the
// inbox and the device lists only through its own interfaces (the wiring
// adapts them), and the inbox knows nothing of federation.
func TestImports(t *testing.T) {
	const mod = "github.com/todeviced/todeviced/internal/"
	forbidden := map[string][]string{
		"matrixfed":  {"federation", "inbox", "devicelists", "storage", "httpapi", "server", "wakeup"},
		"federation": {"inbox", "devicelists", "storage", "httpapi", "server"},
		"inbox":      {"federation", "matrixfed", "devicelists", "storage", "httpapi", "server"},
	}
	for pkg, banned := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+pkg).Output()
		require.NoError(t, err, "go list %s", pkg)
		for _, d := range strings.Fields(string(out)) {
			for _, b := range banned {
				require.False(t, d == mod+b || strings.HasPrefix(d, mod+b+"/"),
					"internal/%s must not depend on internal/%s (it depends on %s)", pkg, b, d)
			}
		}
	}
}
