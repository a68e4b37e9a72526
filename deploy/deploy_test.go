// Package deploy holds no code: its test checks the shipped Grafana
// dashboard and Prometheus alert rules against the metrics a fully wired
// todeviced actually exports, so a renamed or missing metric fails CI
// instead of leaving an empty panel or an alert that can never fire.
package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// notYetProvided are metrics the dashboard and alerts query that components
// not yet on main will export (their names are agreed contracts). They may be
// absent; every other name must exist. Delete entries as their component
// lands; the test logs the ones it already finds.
var notYetProvided = map[string]bool{}

var metricName = regexp.MustCompile(`\btodeviced_[a-zA-Z0-9_]+`)

// dashboard is the part of the dashboard JSON the checks read.
type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Panels     []panel     `json:"panels"` // of collapsed rows
	Targets    []struct {
		Expr         string      `json:"expr"`
		Datasource   *datasource `json:"datasource"`
		LegendFormat string      `json:"legendFormat"`
		Instant      bool        `json:"instant"`
		Range        bool        `json:"range"`
		Hide         bool        `json:"hide"`
	} `json:"targets"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func readDashboard(t *testing.T) dashboard {
	raw, err := os.ReadFile("grafana/todeviced.json")
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	return d
}

func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

// dashboardExprs returns every PromQL expression of the dashboard: panel
// targets and the $instance variable's query.
func dashboardExprs(t *testing.T, d dashboard) []string {
	var exprs []string
	for _, p := range flatten(d.Panels) {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		exprs = append(exprs, v.Definition, string(v.Query))
	}
	return exprs
}

// alertExprs returns the expression of every rule in alerts.yml.
func alertExprs(t *testing.T) []string {
	raw, err := os.ReadFile("prometheus/alerts.yml")
	require.NoError(t, err)
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &f))
	var exprs []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Expr, "alert %s has no expression", r.Alert)
			exprs = append(exprs, r.Expr)
		}
	}
	require.NotEmpty(t, exprs)
	return exprs
}

// exported returns the names of every metric family a fully wired,
// exercised server has: those it gathers, and those only described so far
// (a vector with no children is described but not gathered).
func exported(t *testing.T, b servertest.Backend) map[string]bool {
	reg := prometheus.NewRegistry()
	in := servertest.Start(t, servertest.Config(b.NewURL(t)), server.Options{Registry: reg})
	in.Exercise(t)
	names := map[string]bool{}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	// A Desc has no name accessor; its String form is stable and quotes it.
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	ch := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	return names
}

// TestDashboardAndAlertsQueryExistingMetrics checks every todeviced_* name
// the dashboard and the alert rules query against the registry.
func TestDashboardAndAlertsQueryExistingMetrics(t *testing.T) {
	queried := map[string][]string{} // name -> where
	for _, e := range dashboardExprs(t, readDashboard(t)) {
		for _, n := range metricName.FindAllString(e, -1) {
			queried[n] = append(queried[n], "dashboard")
		}
	}
	for _, e := range alertExprs(t) {
		for _, n := range metricName.FindAllString(e, -1) {
			queried[n] = append(queried[n], "alerts")
		}
	}
	require.NotEmpty(t, queried)

	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		have := exported(t, b)
		names := make([]string, 0, len(queried))
		for n := range queried {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			known := func(name string) bool { return have[name] || notYetProvided[name] }
			base := n
			if !known(base) {
				// A histogram is queried through its series' suffixes.
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(n, suffix); ok && known(trimmed) {
						base = trimmed
					}
				}
			}
			switch {
			case have[base] && notYetProvided[base]:
				t.Logf("%s is provided now: delete it from notYetProvided", base)
			case have[base]:
			case notYetProvided[base]:
				t.Logf("%s is not provided yet (queried by the %s)", base, strings.Join(slices.Compact(queried[n]), " and "))
			default:
				t.Errorf("%s is queried by the %s but no todeviced component exports it", n, strings.Join(slices.Compact(queried[n]), " and "))
			}
		}
	})
}

var selector = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?`)

// TestDashboardShape checks the dashboard's contract with operators: its
// rows, its variables, and that every panel follows them.
func TestDashboardShape(t *testing.T) {
	d := readDashboard(t)
	require.GreaterOrEqual(t, d.SchemaVersion, 38)

	vars := map[string]int{}
	for i, v := range d.Templating.List {
		vars[v.Name] = i
	}
	require.Contains(t, vars, "datasource")
	require.Contains(t, vars, "instance")
	ds := d.Templating.List[vars["datasource"]]
	require.Equal(t, "datasource", ds.Type)
	require.JSONEq(t, `"prometheus"`, string(ds.Query))
	inst := d.Templating.List[vars["instance"]]
	require.Equal(t, "query", inst.Type)
	require.Equal(t, "label_values(todeviced_build_info, instance)", inst.Definition)
	require.Equal(t, &datasource{Type: "prometheus", UID: "${datasource}"}, inst.Datasource)

	var rows []string
	for _, p := range flatten(d.Panels) {
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		require.Equal(t, &datasource{Type: "prometheus", UID: "${datasource}"}, p.Datasource, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q", p.Title)
		for _, tg := range p.Targets {
			require.Equal(t, &datasource{Type: "prometheus", UID: "${datasource}"}, tg.Datasource, "panel %q", p.Title)
			// Every series selector filters on the instance variable.
			for _, m := range selector.FindAllStringSubmatch(tg.Expr, -1) {
				if !strings.HasPrefix(m[1], "todeviced_") && m[2] == "" {
					continue // a function, keyword or label name
				}
				require.Contains(t, m[2], `instance=~"$instance"`, "panel %q: selector %s in %s", p.Title, m[0], tg.Expr)
			}
		}
	}
	for _, want := range []string{"HTTP", "Inbox flow", "Backlog", "Long-polls", "Federation", "Database pool"} {
		require.Contains(t, rows, want)
	}
}
