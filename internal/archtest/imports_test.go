package archtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/todeviced/todeviced/"

// A layer is what a package is for; the rules below are written in layers,
// as docs/ARCHITECTURE.md's "Allowed imports" are.
type layer string

const (
	wiring      layer = "wiring"      // cmd/*, internal/server: builds and runs the rest
	httpLayer   layer = "http"        // internal/httpapi: parses and answers
	domain      layer = "domain"      // decides: inbox, devicelists, federation, devicesync, wakeup
	vocabulary  layer = "vocabulary"  // Matrix words: internal/matrix
	protocol    layer = "protocol"    // the federation toolkit: internal/matrixfed
	storage     layer = "storage"     // internal/storage and its backends
	testSupport layer = "testsupport" // imported by tests only
	tool        layer = "tool"        // the load generator, repository checks
)

// layers classifies every package of the module by its path (relative to
// the module). Longest prefix wins; a package that matches none fails the
// test, so a new package is placed deliberately, here and in
// docs/ARCHITECTURE.md.
var layers = map[string]layer{
	"cmd":                        wiring,
	"internal/server":            wiring,
	"internal/httpapi":           httpLayer,
	"internal/inbox":             domain,
	"internal/devicelists":       domain,
	"internal/federation":        domain,
	"internal/devicesync":        domain,
	"internal/wakeup":            domain,
	"internal/matrix":            vocabulary,
	"internal/matrixfed":         protocol,
	"internal/storage":           storage,
	"internal/storage/storetest": testSupport,
	"internal/servertest":        testSupport,
	"internal/testdb":            testSupport,
	"internal/archtest":          testSupport,
	"internal/loadgen":           tool,
	"deploy":                     tool,
	"scripts":                    tool,
	"sql":                        storage, // the migrations the backends embed
}

// domainImports is what each domain package may import of the other domain
// packages (a package may always import its own subpackages). Federation
// calls devicelists for incoming device-list EDUs, never the reverse;
// devicesync reads the inbox and the device lists and waits on the hub;
// devicelists names the wake-up keys its transactions return (the hub's
// vocabulary, no more); the inbox knows no other domain package, and the
// wiring joins them through interfaces they declare.
var domainImports = map[string][]string{
	"internal/devicesync":  {"internal/inbox", "internal/devicelists", "internal/wakeup"},
	"internal/federation":  {"internal/devicelists", "internal/wakeup"},
	"internal/inbox":       {},
	"internal/devicelists": {"internal/wakeup"},
	"internal/wakeup":      {},
}

type edge struct{ from, to string }

// rule says why an import is not allowed, or "" when it is.
type rule func(from, to string, fl, tl layer) string

var rules = []rule{
	func(from, to string, fl, tl layer) string {
		if strings.HasPrefix(to, "cmd/") {
			return "nothing imports a command"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if tl == httpLayer && fl != wiring {
			return "only the wiring imports the HTTP layer"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if (fl == domain || fl == vocabulary) && (tl == httpLayer || tl == wiring || tl == storage || tl == tool) {
			return fmt.Sprintf("a %s package does not import the %s layer", fl, tl)
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if fl == vocabulary && tl != vocabulary {
			return "vocabulary packages import only vocabulary"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if fl == protocol && tl != vocabulary && tl != protocol {
			return "the protocol toolkit imports only vocabulary"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		// The device lists ask other servers through an interface of their
		// own (devicelists.Remote) that the wiring fills with the signed
		// client; the inbox never talks to other servers.
		if tl == protocol && fl == domain && domainRoot(from) != "internal/federation" {
			return "among the domain packages only federation uses the protocol toolkit"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if fl != domain || tl != domain {
			return ""
		}
		f, t := domainRoot(from), domainRoot(to)
		if f == t || slices.Contains(domainImports[f], t) {
			return ""
		}
		return fmt.Sprintf("%s may import only %v of the domain packages", f, domainImports[f])
	},
	func(from, to string, fl, tl layer) string {
		if fl == httpLayer && (tl == storage || tl == wiring) {
			return "handlers talk to domain packages, not to storage or the wiring"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if fl == storage && (tl == httpLayer || tl == wiring) {
			return "storage does not import the HTTP layer or the wiring"
		}
		return ""
	},
	func(from, to string, fl, tl layer) string {
		if tl == testSupport && fl != testSupport {
			return "test support is imported from tests only"
		}
		return ""
	},
}

// domainRoot is the domain package a path belongs to (a subpackage belongs
// to its parent).
func domainRoot(p string) string {
	for root := range domainImports {
		if p == root || strings.HasPrefix(p, root+"/") {
			return root
		}
	}
	return p
}

func classify(p string) (layer, bool) {
	best, l := -1, layer("")
	for prefix, pl := range layers {
		if (p == prefix || strings.HasPrefix(p, prefix+"/")) && len(prefix) > best {
			best, l = len(prefix), pl
		}
	}
	return l, best >= 0
}

// importGraph returns, for every package of the module, the packages of the
// module it imports (test files not included: tests may import anything).
func importGraph(t *testing.T) map[string][]string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go command is needed to list imports: %v", err)
		}
		t.Skipf("the go command is needed to list imports: %v", err)
	}
	cmd := exec.Command(goTool, "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	cmd.Dir = moduleRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	g := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], module) {
			continue
		}
		from := strings.TrimPrefix(fields[0], module)
		g[from] = []string{}
		for _, imp := range fields[1:] {
			if strings.HasPrefix(imp, module) {
				g[from] = append(g[from], strings.TrimPrefix(imp, module))
			}
		}
	}
	return g
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func formatGraph(g map[string][]string) string {
	var b strings.Builder
	froms := make([]string, 0, len(g))
	for from := range g {
		froms = append(froms, from)
	}
	slices.Sort(froms)
	for _, from := range froms {
		l, _ := classify(from)
		fmt.Fprintf(&b, "  %-28s %-12s -> %s\n", from, "("+string(l)+")", strings.Join(g[from], " "))
	}
	return b.String()
}

// violations lists every import of g that breaks a rule, with the reasons.
func violations(g map[string][]string) (map[edge][]string, []string) {
	bad := map[edge][]string{}
	var unclassified []string
	for from, tos := range g {
		fl, ok := classify(from)
		if !ok {
			unclassified = append(unclassified, from)
			continue
		}
		for _, to := range tos {
			tl, ok := classify(to)
			if !ok {
				continue // reported as unclassified on its own line
			}
			for _, r := range rules {
				if why := r(from, to, fl, tl); why != "" {
					bad[edge{from, to}] = append(bad[edge{from, to}], why)
				}
			}
		}
	}
	slices.Sort(unclassified)
	return bad, unclassified
}

// TestImportsFollowTheArchitecture enforces the allowed imports of
// docs/ARCHITECTURE.md on the packages' non-test imports.
func TestImportsFollowTheArchitecture(t *testing.T) {
	g := importGraph(t)
	bad, unclassified := violations(g)
	var problems []string
	for _, p := range unclassified {
		problems = append(problems, fmt.Sprintf("package %s has no layer: add it to layers (and to docs/ARCHITECTURE.md)", p))
	}
	for e, why := range bad {
		problems = append(problems, fmt.Sprintf("%s imports %s: %s", e.from, e.to, strings.Join(why, "; ")))
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		t.Fatalf("%s\n\nimports between the module's packages (non-test):\n%s", strings.Join(problems, "\n"), formatGraph(g))
	}
}

// The rules catch what they are meant to: each forbidden kind of import, on
// a made-up graph.
func TestRulesCatchForbiddenImports(t *testing.T) {
	for _, c := range []struct{ from, to string }{
		{"internal/server", "cmd/todeviced"},
		{"internal/devicesync", "internal/httpapi"},
		{"internal/inbox", "internal/storage"},
		{"internal/devicesync", "internal/server"},
		{"internal/inbox", "internal/federation"},
		{"internal/inbox", "internal/devicelists"},
		{"internal/inbox", "internal/matrixfed"},
		{"internal/devicelists", "internal/matrixfed"},
		{"internal/matrixfed", "internal/federation"},
		{"internal/matrixfed", "internal/wakeup"},
		{"internal/federation", "internal/inbox"},
		{"internal/devicelists", "internal/devicesync"},
		{"internal/wakeup", "internal/inbox"},
		{"internal/matrix", "internal/inbox"},
		{"internal/httpapi", "internal/storage/postgres"},
		{"internal/storage/sqlite", "internal/httpapi"},
		{"internal/server", "internal/testdb"},
		{"internal/federation", "internal/servertest"},
	} {
		bad, _ := violations(map[string][]string{c.from: {c.to}})
		if len(bad) == 0 {
			t.Errorf("%s -> %s is allowed, want it refused", c.from, c.to)
		}
	}
	for _, c := range []struct{ from, to string }{
		{"internal/server", "internal/httpapi"},
		{"internal/httpapi", "internal/devicesync"},
		{"internal/devicesync", "internal/inbox"},
		{"internal/federation", "internal/devicelists"},
		{"internal/storage/postgres", "internal/inbox"},
		{"internal/servertest", "internal/testdb"},
		{"internal/storage/storetest", "internal/devicesync"},
		{"internal/federation/protocol", "internal/federation"},
	} {
		if bad, _ := violations(map[string][]string{c.from: {c.to}}); len(bad) > 0 {
			t.Errorf("%s -> %s is refused (%v), want it allowed", c.from, c.to, bad)
		}
	}
}
