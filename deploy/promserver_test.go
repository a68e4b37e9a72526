package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/todeviced/todeviced/internal/servertest"
)

// promScrapeInterval is the scrape and rule evaluation interval of the
// test's Prometheus: short, so a load of seconds leaves enough samples for
// every rate window.
const promScrapeInterval = time.Second

// prometheusBinary returns the Prometheus server to run: $TODEVICED_TEST_PROMETHEUS,
// or `prometheus` on the PATH (Debian's package). Without one the test
// skips, except under CI=true, where .ci/run has installed it.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TODEVICED_TEST_PROMETHEUS"); p != "" {
		return p
	}
	p, err := exec.LookPath("prometheus")
	if err == nil {
		return p
	}
	msg := "no prometheus binary on the PATH (apt-get install --no-install-recommends prometheus, or set TODEVICED_TEST_PROMETHEUS)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// promServer is a Prometheus server the test started.
type promServer struct {
	url    string
	client *http.Client
}

// lockedBuffer collects the server's output (written by exec's copier
// goroutine, read by the test when it fails).
type lockedBuffer = servertest.LockedBuffer

// testRules rewrites alerts.yml for the test: every expression as shipped,
// every `for` shortened to three evaluation intervals, so an alert whose
// condition holds goes pending at once and fires seconds later, while a
// single slow scrape of a busy instance fires nothing.
func testRules(t *testing.T, dir string) string {
	t.Helper()
	raw, err := os.ReadFile("prometheus/alerts.yml")
	require.NoError(t, err)
	var f map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &f))
	groups, ok := f["groups"].([]any)
	require.True(t, ok, "alerts.yml: groups")
	for _, g := range groups {
		rules, ok := g.(map[string]any)["rules"].([]any)
		require.True(t, ok, "alerts.yml: rules")
		for _, r := range rules {
			if _, alerting := r.(map[string]any)["alert"]; alerting {
				r.(map[string]any)["for"] = (3 * promScrapeInterval).String()
			}
		}
	}
	out, err := yaml.Marshal(f)
	require.NoError(t, err)
	path := filepath.Join(dir, "alerts.yml")
	require.NoError(t, os.WriteFile(path, out, 0o600))
	return path
}

// testConfig rewrites the shipped prometheus.yml for the test: its job
// names and metrics paths as shipped (the alerts select on job), with the
// todeviced job pointed at targets, the self-scrape at listen, the rules at
// rulesPath and every interval at promScrapeInterval.
func testConfig(t *testing.T, dir, listen, rulesPath string, targets []string) string {
	t.Helper()
	raw, err := os.ReadFile("prometheus/prometheus.yml")
	require.NoError(t, err)
	var c map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &c))
	c["global"] = map[string]any{
		"scrape_interval":     promScrapeInterval.String(),
		"scrape_timeout":      promScrapeInterval.String(),
		"evaluation_interval": promScrapeInterval.String(),
	}
	c["rule_files"] = []any{rulesPath}
	jobs, ok := c["scrape_configs"].([]any)
	require.True(t, ok, "prometheus.yml: scrape_configs")
	found := false
	for _, j := range jobs {
		job := j.(map[string]any)
		switch job["job_name"] {
		case "todeviced":
			found = true
			job["static_configs"] = []any{map[string]any{"targets": targets}}
		default:
			// Only loopback addresses: anything else scrapes Prometheus itself.
			job["static_configs"] = []any{map[string]any{"targets": []string{listen}}}
		}
	}
	require.True(t, found, `prometheus.yml has no job "todeviced", which the alerts and the dashboard select on`)
	out, err := yaml.Marshal(c)
	require.NoError(t, err)
	path := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(path, out, 0o600))
	return path
}

// freeLoopbackAddr returns a loopback address nothing listens on just now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// startPrometheus runs bin scraping targets with the test's rules until
// the test ends, on temporary storage, and waits until it is ready.
func startPrometheus(t *testing.T, ctx context.Context, bin string, targets []string) *promServer {
	t.Helper()
	dir := t.TempDir()
	rules := testRules(t, dir)
	// The port is free when chosen; should another process take it before
	// Prometheus binds it, Prometheus exits and the next try picks another.
	for try := 1; ; try++ {
		listen := freeLoopbackAddr(t)
		storage := filepath.Join(dir, fmt.Sprintf("data-%d", try))
		cmd := exec.Command(bin,
			"--config.file="+testConfig(t, dir, listen, rules, targets),
			"--storage.tsdb.path="+storage,
			"--web.listen-address="+listen,
			"--log.level=warn",
		)
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		require.NoError(t, cmd.Start(), "starting %s", bin)
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		p := &promServer{url: "http://" + listen, client: &http.Client{Timeout: 10 * time.Second}}
		ready := p.waitReady(ctx, exited)
		if ready {
			t.Cleanup(func() {
				stop()
				p.client.CloseIdleConnections()
				if t.Failed() {
					t.Logf("prometheus output:\n%s", out.String())
				}
			})
			return p
		}
		stop()
		if try == 3 || ctx.Err() != nil {
			t.Fatalf("prometheus did not become ready on %s:\n%s", listen, out.String())
		}
	}
}

// waitReady polls /-/ready until it answers 200, the process exits or ctx
// ends.
func (p *promServer) waitReady(ctx context.Context, exited <-chan struct{}) bool {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/-/ready", nil)
		if err != nil {
			return false
		}
		if resp, err := p.client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		select {
		case <-exited:
			return false
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// promSeries is one series of a query's answer: value for a vector,
// values for a matrix.
type promSeries struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
	Values [][]any           `json:"values"`
}

// samples returns the series' values.
func (s promSeries) samples() []float64 {
	pairs := s.Values
	if s.Value != nil {
		pairs = [][]any{s.Value}
	}
	out := make([]float64, 0, len(pairs))
	for _, p := range pairs {
		if len(p) != 2 {
			continue
		}
		str, _ := p[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			v = math.NaN()
		}
		out = append(out, v)
	}
	return out
}

// hasData reports whether any sample of any series is a number other than
// zero: what a panel needs to show more than a flat line.
func hasData(ss []promSeries) bool {
	for _, s := range ss {
		for _, v := range s.samples() {
			if v != 0 && !math.IsNaN(v) && !math.IsInf(v, 0) {
				return true
			}
		}
	}
	return false
}

// get calls the HTTP API and decodes data of a successful answer; an error
// answer (a PromQL error among them) or a warning is returned as an error.
func (p *promServer) get(ctx context.Context, path string, q url.Values, data any) error {
	u := p.url + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("querying prometheus: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Warnings  []string        `json:"warnings"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("decoding prometheus's answer (HTTP %d): %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("prometheus: %s: %s", body.ErrorType, body.Error)
	}
	if len(body.Warnings) > 0 {
		return fmt.Errorf("prometheus warns: %v", body.Warnings)
	}
	return json.Unmarshal(body.Data, data)
}

func promTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64)
}

// queryResult is the data of /api/v1/query and /api/v1/query_range.
type queryResult struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

func (r queryResult) series() ([]promSeries, error) {
	if r.ResultType == "scalar" || r.ResultType == "string" {
		var v []any
		if err := json.Unmarshal(r.Result, &v); err != nil {
			return nil, err
		}
		return []promSeries{{Value: v}}, nil
	}
	var ss []promSeries
	err := json.Unmarshal(r.Result, &ss)
	return ss, err
}

// query evaluates expr at one instant (/api/v1/query).
func (p *promServer) query(ctx context.Context, expr string, at time.Time) ([]promSeries, error) {
	var r queryResult
	if err := p.get(ctx, "/api/v1/query", url.Values{"query": {expr}, "time": {promTime(at)}}, &r); err != nil {
		return nil, err
	}
	return r.series()
}

// queryRange evaluates expr at every step from start to end
// (/api/v1/query_range), as a Grafana time series panel does.
func (p *promServer) queryRange(ctx context.Context, expr string, start, end time.Time, step time.Duration) ([]promSeries, error) {
	var r queryResult
	q := url.Values{"query": {expr}, "start": {promTime(start)}, "end": {promTime(end)}, "step": {step.String()}}
	if err := p.get(ctx, "/api/v1/query_range", q, &r); err != nil {
		return nil, err
	}
	return r.series()
}

// labelValues is Grafana's label_values(match, label) over a time range.
func (p *promServer) labelValues(ctx context.Context, label, match string, start, end time.Time) ([]string, error) {
	var vs []string
	q := url.Values{"match[]": {match}, "start": {promTime(start)}, "end": {promTime(end)}}
	err := p.get(ctx, "/api/v1/label/"+url.PathEscape(label)+"/values", q, &vs)
	return vs, err
}

// promAlert is an entry of /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

func (p *promServer) alerts(ctx context.Context) ([]promAlert, error) {
	var d struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.get(ctx, "/api/v1/alerts", nil, &d)
	return d.Alerts, err
}

// promRule is an alerting rule of /api/v1/rules.
type promRule struct {
	Name           string    `json:"name"`
	Query          string    `json:"query"`
	Health         string    `json:"health"`
	LastError      string    `json:"lastError"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

func (p *promServer) rules(ctx context.Context) ([]promRule, error) {
	var d struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get(ctx, "/api/v1/rules", url.Values{"type": {"alert"}}, &d); err != nil {
		return nil, err
	}
	var out []promRule
	for _, g := range d.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// waitQuery polls expr until it returns a series with data, or ctx ends;
// it reports which.
func (p *promServer) waitQuery(ctx context.Context, expr string) bool {
	for {
		if ss, err := p.query(ctx, expr, time.Now()); err == nil && hasData(ss) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}
