package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

// quietWhenHealthy lists the dashboard targets ("panel / legend") that
// show only zeros while nothing fails, with the failure that moves them.
// Every other target must show a non-zero number during the test's load;
// all of them, these included, must be valid PromQL and return series.
var quietWhenHealthy = map[string]string{
	// count(todeviced_database_ready == 0) or vector(0): 0 unless an
	// instance cannot use its database.
	"Database ready / not ready": "a database down or unmigrated",
	// 5xx over all requests: 0 unless requests fail on the server.
	"Error ratio / 5xx": "server errors",
	// Inbound EDUs rejected, duplicate, malformed or not from their
	// origin, and outbound ones rejected or expired: bad peers only.
	"EDUs sent, received and dropped / dropped {{reason}}": "bad or rejected EDUs",
	// Time requests spent waiting for a pool connection: 0 until the pool
	// is saturated (TodevicedDatabasePoolSaturated).
	"Acquire wait / {{instance}}": "a saturated database pool",
	// Acquisitions that found no idle connection: a pool busier than its
	// idle connections, as under saturation.
	"Acquisitions / had to wait": "a busy database pool",
	// Acquisitions the request's end abandoned while waiting.
	"Acquisitions / canceled": "a saturated database pool",
}

// alertSelectorsOnlyUnderFailure lists series selectors of alerts.yml that
// have no series while nothing fails (every other selector must return
// series during the test).
var alertSelectorsOnlyUnderFailure = map[string]string{
	// The code label takes only the codes answered so far.
	`todeviced_http_requests_total{code=~"5.."}`: "no request has failed on the server",
}

// The alert the test brings about for real: the federation peer b.test
// goes down.
const expectedAlert = "TodevicedInstanceDown"

// TestDashboardAndAlertsOnRealPrometheus runs Debian's Prometheus against a
// federating pair of todeviced instances on PostgreSQL while a short load
// runs, then evaluates every dashboard query and alert expression through
// Prometheus's HTTP API the way Grafana and the rule manager do. It
// catches what matching names cannot: wrong label names, rate windows too
// short for the scrape interval, PromQL that does not parse, a job name
// the alerts select on that the shipped config does not scrape.
//
// It lives in deploy/ beside the files it checks (the dashboard, the
// rules, the shipped prometheus.yml, read by relative path) and the
// name-matching test; the instances come from internal/servertest.
func TestDashboardAndAlertsOnRealPrometheus(t *testing.T) {
	t.Parallel()
	bin := prometheusBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()

	a, b := startFederatingPair(t)
	aTarget, bTarget := hostPort(t, a.MetricsURL), hostPort(t, b.MetricsURL)
	prom := startPrometheus(t, ctx, bin, []string{aTarget, bTarget})
	start := time.Now()
	require.True(t, prom.waitQuery(ctx, `count(up{job="todeviced"} == 1) == 2`), "prometheus never scraped both instances")

	runLoad(t, ctx, a, b)

	// Gauges of the database's state are refreshed every 15 s: wait for the
	// refresh after the load (b.test's cached copy of Alice's device list,
	// a.test's outbox holding the EDU for the dead c.test) to be scraped.
	// A timeout here is reported by the panel checks below.
	refreshed, cancelRefresh := context.WithTimeout(ctx, 30*time.Second)
	prom.waitQuery(refreshed, fmt.Sprintf(`todeviced_device_list_remote_users{instance=%q} > 0`, bTarget))
	prom.waitQuery(refreshed, fmt.Sprintf(`todeviced_federation_destinations_backing_off{instance=%q} > 0`, aTarget))
	prom.waitQuery(refreshed, fmt.Sprintf(`todeviced_inbox_pending_messages{instance=%q} > 0`, aTarget))
	cancelRefresh()
	// The other gauge jobs ran on the same tick: let a scrape or two see them.
	time.Sleep(2 * promScrapeInterval)

	// The failure: the federation destination b.test goes down while
	// a.test has a message for it.
	b.Stop(t)
	a.Send(t, "tok-alice-A1", "m.test", "after-b-down", map[string]map[string]any{bob: {"B1": map[string]any{"n": 99}}})
	// Down after one failed scrape, pending at the next evaluation, firing
	// once for: (3 s) has passed: seconds, given 20.
	alerting, cancelAlerting := context.WithTimeout(ctx, 20*time.Second)
	seen := waitAlert(t, alerting, prom, expectedAlert, bTarget)
	cancelAlerting()
	if seen == "" {
		t.Errorf("%s never became pending or firing for %s, which was stopped", expectedAlert, bTarget)
	} else {
		t.Logf("%s for %s observed %s", expectedAlert, bTarget, seen)
	}
	// One more evaluation for the checks below to see.
	time.Sleep(2 * promScrapeInterval)
	end := time.Now()

	t.Run("dashboard", func(t *testing.T) { checkDashboard(t, ctx, prom, start, end, []string{aTarget, bTarget}) })
	t.Run("alerts", func(t *testing.T) { checkAlerts(t, ctx, prom, start, end, aTarget, bTarget) })
}

const (
	alice = "@alice:a.test"
	dave  = "@dave:a.test"
	bob   = "@bob:b.test"
	// carol is on c.test, a destination nothing answers at.
	carol = "@carol:c.test"
	room  = "!prometheus:a.test"
)

func hostPort(t *testing.T, rawURL string) string {
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	return u.Host
}

func loopback(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// startFederatingPair starts a.test and b.test on databases of their own,
// each the other's federation destination; a.test also has c.test, whose
// address nothing listens on.
func startFederatingPair(t *testing.T) (a, b *servertest.Instance) {
	apiA, apiB := loopback(t), loopback(t)
	cfg := func(name string, peers map[string]string) server.Config {
		c := servertest.Config(testdb.New(t))
		c.ServerName = name
		c.SigningKey = filepath.Join(t.TempDir(), name+".key")
		c.FederationDestinations = peers
		return c
	}
	cfgA := cfg("a.test", map[string]string{
		"b.test": "http://" + apiB.Addr().String(),
		"c.test": "http://" + freeLoopbackAddr(t),
	})
	cfgB := cfg("b.test", map[string]string{"a.test": "http://" + apiA.Addr().String()})
	opts := server.Options{Version: "v0.0.0-prometheus-test"}
	a = servertest.StartOn(t, cfgA, opts, servertest.Logger(t), apiA, loopback(t))
	b = servertest.StartOn(t, cfgB, opts, servertest.Logger(t), apiB, loopback(t))
	return a, b
}

// internal calls an instance's internal API and requires 200.
func internal(t *testing.T, in *servertest.Instance, method, path string, body any) {
	t.Helper()
	r := in.Do(t, method, "/_todeviced/internal/v1"+path, servertest.Secret, body)
	require.Equal(t, http.StatusOK, r.Status, "%s %s: %s", method, path, r.Body)
}

// encryptedRoom tells in that room is encrypted and who is in it.
func encryptedRoom(t *testing.T, in *servertest.Instance, members ...string) {
	t.Helper()
	internal(t, in, http.MethodPut, "/rooms/"+url.PathEscape(room)+"/encryption", map[string]any{})
	ms := map[string]any{}
	for i, u := range members {
		ms[u] = map[string]any{"membership": "join", "stream_ordering": i + 1}
	}
	internal(t, in, http.MethodPut, "/rooms/"+url.PathEscape(room)+"/members", map[string]any{"members": ms})
}

// putDeviceWithKeys creates a device with an access token and keys.
func putDeviceWithKeys(t *testing.T, in *servertest.Instance, user, device string) {
	t.Helper()
	keys := map[string]any{
		"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"curve25519:" + device: "curve-" + device, "ed25519:" + device: "ed-" + device},
	}
	internal(t, in, http.MethodPut, "/users/"+url.PathEscape(user)+"/devices/"+url.PathEscape(device),
		map[string]any{"access_token": "tok-" + strings.TrimPrefix(strings.Split(user, ":")[0], "@") + "-" + device, "keys": keys})
}

// familySum adds up every series of a counter or gauge family in reg.
func familySum(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// waitUntil polls cond until it holds or ctx ends (failing the test).
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// collect syncs a device until it has received want events.
func collect(t *testing.T, ctx context.Context, in *servertest.Instance, token string, want int) {
	t.Helper()
	got, since := 0, ""
	for got < want {
		require.NoError(t, ctx.Err(), "%d of %d events arrived", got, want)
		s := in.Sync(t, token, since, 2*time.Second)
		got += len(s.ToDevice.Events)
		since = s.NextBatch
	}
}

// sendRaw is a sendToDevice that reports instead of failing the test, for
// the senders running concurrently.
func sendRaw(ctx context.Context, client *http.Client, in *servertest.Instance, token, txnID string, messages map[string]map[string]any) error {
	body, err := json.Marshal(map[string]any{"messages": messages})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, in.URL+"/_matrix/client/v3/sendToDevice/m.test/"+url.PathEscape(txnID), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sendToDevice %s: %d %s", txnID, resp.StatusCode, data)
	}
	return nil
}

// runLoad drives both instances through what the dashboard shows: local
// sends (concurrent, a retry, one to an unknown device), syncs that deliver
// and acknowledge, a long-poll, to-device messages both ways over
// federation, one for a dead destination, and a device-list change that
// b.test hears of over federation. Every loop is bounded by count or ctx.
func runLoad(t *testing.T, ctx context.Context, a, b *servertest.Instance) {
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	for _, d := range []string{"A1", "A2"} {
		putDeviceWithKeys(t, a, alice, d)
	}
	a.PutDevice(t, dave, "D1", "tok-dave-D1")
	a.PutDevice(t, dave, "D2", "tok-dave-D2")
	b.PutDevice(t, bob, "B1", "tok-bob-B1")
	b.PutDevice(t, bob, "B2", "tok-bob-B2")

	// Alice and Bob share an encrypted room: each server fetches the other
	// user's device list.
	encryptedRoom(t, a, alice, bob)
	encryptedRoom(t, b, alice, bob)

	// Alice's second device never syncs: its messages stay pending.
	a.Send(t, "tok-alice-A1", "m.test", "to-a2", map[string]map[string]any{alice: {"A2": map[string]any{"n": 0}}})
	// The dead destination's EDU waits in a.test's outbox from now on.
	a.Send(t, "tok-alice-A1", "m.test", "to-carol", map[string]map[string]any{carol: {"C1": map[string]any{"n": 0}}})

	// A long-poll that nothing answers, open across a few scrapes.
	idle := a.Sync(t, "tok-dave-D2", "", 0)
	var polls sync.WaitGroup
	polls.Go(func() {
		q := url.Values{"since": {idle.NextBatch}, "timeout": {"4000"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/_matrix/client/v3/sync?"+q.Encode(), nil)
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer tok-dave-D2")
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	defer polls.Wait()

	// Local sends, eight at a time (PostgreSQL groups sends that arrive
	// while others are being written), each to Dave's phone and to a
	// device that does not exist.
	daveFirst := a.Sync(t, "tok-dave-D1", "", 0)
	const senders, each = 8, 5
	errs := make(chan error, senders*each)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				errs <- sendRaw(ctx, client, a, "tok-alice-A1", fmt.Sprintf("local-%d-%d", s, i),
					map[string]map[string]any{dave: {"D1": map[string]any{"n": i}, "NOSUCH": map[string]any{}}})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// A client's retry, answered from the transaction record.
	require.NoError(t, sendRaw(ctx, client, a, "tok-alice-A1", "local-0-0", map[string]map[string]any{dave: {"D1": map[string]any{"n": 0}}}))
	// Dave syncs: the messages, then the acknowledgement.
	got := a.Sync(t, "tok-dave-D1", daveFirst.NextBatch, 0)
	require.Len(t, got.ToDevice.Events, senders*each)
	a.Sync(t, "tok-dave-D1", got.NextBatch, 0)

	// Over federation, both ways.
	for i := range 3 {
		a.Send(t, "tok-alice-A1", "m.test", fmt.Sprint("to-bob-", i), map[string]map[string]any{bob: {"*": map[string]any{"n": i}}})
	}
	for i := range 2 {
		b.Send(t, "tok-bob-B1", "m.test", fmt.Sprint("to-alice-", i), map[string]map[string]any{alice: {"A1": map[string]any{"n": i}}})
	}
	collect(t, ctx, b, "tok-bob-B1", 3)
	collect(t, ctx, a, "tok-alice-A1", 2)

	// A device-list change: b.test, which caches Alice's list, hears of her
	// new device.
	waitUntil(t, ctx, "b.test to fetch Alice's device list", func() bool {
		return familySum(t, b.Registry(), "todeviced_device_list_resyncs_total") >= 1
	})
	putDeviceWithKeys(t, a, alice, "A3")
	waitUntil(t, ctx, "b.test to receive Alice's device-list update", func() bool {
		return familySum(t, b.Registry(), "todeviced_device_list_updates_received_total") >= 1
	})

	// End-to-end keys: Alice's new device uploads signed keys, and Bob on
	// b.test claims them over federation until only the fallback key is
	// left.
	a3 := servertest.NewE2EDevice(alice, "A3")
	r := a.Do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", "tok-alice-A3", map[string]any{
		"device_keys": a3.DeviceKeys(), "one_time_keys": a3.OneTimeKeys(0, 2), "fallback_keys": a3.FallbackKey("F"),
	})
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	for range 3 {
		r := b.Do(t, http.MethodPost, "/_matrix/client/v3/keys/claim", "tok-bob-B1",
			map[string]any{"one_time_keys": map[string]any{alice: map[string]any{"A3": "signed_curve25519"}}})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.Contains(t, string(r.Body), "signed_curve25519:", "a key of Alice's device over federation")
	}

	// Requests that fail on the client's side, twice: a labelled series is
	// born at its first increment, which rate() cannot see, so a code
	// answered once would leave the 4xx ratio at zero.
	for range 2 {
		require.Equal(t, http.StatusNotFound, a.Do(t, http.MethodGet, "/no/such/route", "", nil).Status)
		require.Equal(t, http.StatusUnauthorized, b.Do(t, http.MethodGet, "/_matrix/client/v3/sync", "wrong-token", nil).Status)
		time.Sleep(2 * promScrapeInterval)
	}
}

// waitAlert waits until alertname is pending or firing for instance and
// returns the states seen ("" if it never was).
func waitAlert(t *testing.T, ctx context.Context, prom *promServer, alertname, instance string) string {
	t.Helper()
	var states []string
	for ctx.Err() == nil && !slices.Contains(states, "firing") {
		as, err := prom.alerts(ctx)
		if ctx.Err() != nil {
			break
		}
		require.NoError(t, err)
		for _, a := range as {
			if a.Labels["alertname"] == alertname && a.Labels["instance"] == instance && !slices.Contains(states, a.State) {
				states = append(states, a.State)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return strings.Join(states, " then ")
}

// dashTarget is one query of a dashboard panel.
type dashTarget struct {
	key     string // "panel / legend"
	legend  string
	expr    string
	instant bool
}

func dashTargets(t *testing.T) []dashTarget {
	var out []dashTarget
	seen := map[string]bool{}
	for _, p := range flatten(readDashboard(t).Panels) {
		for _, tg := range p.Targets {
			if tg.Hide {
				continue
			}
			key := p.Title + " / " + tg.LegendFormat
			require.False(t, seen[key], "two targets are called %q: the allowlist could not tell them apart", key)
			seen[key] = true
			out = append(out, dashTarget{key: key, legend: tg.LegendFormat, expr: tg.Expr, instant: tg.Instant && !tg.Range})
		}
	}
	require.NotEmpty(t, out)
	return out
}

var legendLabel = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)

var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]`)

// interpolate substitutes Grafana's variables in expr as Grafana does;
// a variable it does not know is an error, so a new one cannot slip by
// untested.
func interpolate(expr string, vars map[string]string) (string, error) {
	var unknown []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sm := grafanaVar.FindStringSubmatch(m)
		name := sm[1] + sm[3] + sm[4]
		v, ok := vars[name]
		if !ok || sm[2] != "" {
			unknown = append(unknown, m)
			return m
		}
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("unknown Grafana variable(s) %v", unknown)
	}
	return out, nil
}

// grafanaRegexValue is the value Grafana substitutes for a multi-value
// variable in a Prometheus query: each value's regex metacharacters
// escaped (the backslash doubled for the PromQL string), joined as (a|b).
func grafanaRegexValue(values []string) string {
	escaped := make([]string, len(values))
	for i, v := range values {
		var sb strings.Builder
		for _, r := range v {
			if strings.ContainsRune(`$^*{}[]'+?.()|\`, r) {
				sb.WriteString(`\\`)
			}
			sb.WriteRune(r)
		}
		escaped[i] = sb.String()
	}
	if len(escaped) == 1 {
		return escaped[0]
	}
	return "(" + strings.Join(escaped, "|") + ")"
}

// checkDashboard evaluates every panel query over the test's window as
// Grafana would with both instances selected: range queries with a step of
// $__interval, instant queries at the end.
func checkDashboard(t *testing.T, ctx context.Context, prom *promServer, start, end time.Time, instances []string) {
	d := readDashboard(t)
	var instVar string
	for _, v := range d.Templating.List {
		if v.Name == "instance" {
			instVar = v.Definition
		}
	}
	m := regexp.MustCompile(`^label_values\((.+), *(\w+)\)$`).FindStringSubmatch(instVar)
	require.NotNil(t, m, "$instance is %q, not label_values(metric, label)", instVar)
	values, err := prom.labelValues(ctx, m[2], m[1], start, end)
	require.NoError(t, err, "$instance: %s", instVar)
	require.ElementsMatch(t, instances, values, "$instance (%s) offers every scraped instance", instVar)

	// The step Grafana picks for a window this short is its minimum, the
	// data source's scrape interval (timeInterval); $__rate_interval is
	// then max($__interval + scrape interval, 4 × scrape interval).
	step := promScrapeInterval
	rateInterval := max(step+promScrapeInterval, 4*promScrapeInterval)
	window := end.Sub(start).Truncate(time.Second)
	vars := map[string]string{
		"instance":        grafanaRegexValue(values),
		"__interval":      step.String(),
		"__interval_ms":   strconv.FormatInt(step.Milliseconds(), 10),
		"__rate_interval": rateInterval.String(),
		"__range":         window.String(),
		"__range_s":       strconv.Itoa(int(window.Seconds())),
	}

	targets := dashTargets(t)
	keys := map[string]bool{}
	for _, tg := range targets {
		keys[tg.key] = true
		expr, err := interpolate(tg.expr, vars)
		if err != nil {
			t.Errorf("%s: %v in %s", tg.key, err, tg.expr)
			continue
		}
		var ss []promSeries
		if tg.instant {
			ss, err = prom.query(ctx, expr, end)
		} else {
			ss, err = prom.queryRange(ctx, expr, start, end, step)
		}
		t.Logf("%s: %d series, peak %s", tg.key, len(ss), peak(ss))
		switch {
		case err != nil:
			t.Errorf("%s: %v\n\tquery: %s", tg.key, err, expr)
		case len(ss) == 0:
			t.Errorf("%s: no series%s\n\tquery: %s", tg.key, emptySelectors(ctx, prom, expr, start, end), expr)
		case !hasData(ss) && quietWhenHealthy[tg.key] == "":
			t.Errorf("%s: only zeros or NaN during the load%s\n\tquery: %s", tg.key, emptySelectors(ctx, prom, expr, start, end), expr)
		case hasData(ss) && quietWhenHealthy[tg.key] != "":
			t.Logf("%s: has data although only %s should move it", tg.key, quietWhenHealthy[tg.key])
		}
		// The legend's labels are on every series: a by() or a legend
		// naming a label the series do not have shows a blank legend.
		for _, lm := range legendLabel.FindAllStringSubmatch(tg.legend, -1) {
			for _, s := range ss {
				if s.Metric[lm[1]] == "" {
					t.Errorf("%s: a series has no label %q for the legend: %v\n\tquery: %s", tg.key, lm[1], s.Metric, expr)
					break
				}
			}
		}
	}
	for k := range quietWhenHealthy {
		require.True(t, keys[k], "quietWhenHealthy names %q, which the dashboard does not have", k)
	}
}

// peak describes the largest number among the series' samples.
func peak(ss []promSeries) string {
	best, found := math.Inf(-1), false
	for _, s := range ss {
		for _, v := range s.samples() {
			if !math.IsNaN(v) && v > best {
				best, found = v, true
			}
		}
	}
	if !found {
		return "none"
	}
	return strconv.FormatFloat(best, 'g', 4, 64)
}

// selectorRE finds series selectors: a todeviced_ name with or without
// matchers, or any name with matchers (functions, keywords and label names
// have none).
var selectorRE = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?`)

func selectors(expr string) []string {
	var out []string
	for _, m := range selectorRE.FindAllStringSubmatch(expr, -1) {
		if strings.HasPrefix(m[0], "todeviced_") || m[1] != "" {
			out = append(out, m[0])
		}
	}
	return slices.Compact(out)
}

// emptySelectors names the selectors of expr that match no series over
// the window, to say why a query came back empty.
func emptySelectors(ctx context.Context, prom *promServer, expr string, start, end time.Time) string {
	var empty []string
	for _, s := range selectors(expr) {
		if ss, err := prom.queryRange(ctx, s, start, end, promScrapeInterval); err == nil && len(ss) == 0 {
			empty = append(empty, s)
		}
	}
	if len(empty) == 0 {
		return ""
	}
	return "; selectors without series: " + strings.Join(empty, ", ")
}

// alertRule is a rule of alerts.yml.
type alertRule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

func alertRules(t *testing.T) []alertRule {
	raw, err := os.ReadFile("prometheus/alerts.yml")
	require.NoError(t, err)
	var f struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &f))
	var out []alertRule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	require.NotEmpty(t, out)
	return out
}

// checkAlerts checks every rule as Prometheus's rule manager ran it, every
// expression through the query API, every series selector in them for
// series, and that the only alert raised is the one the test caused.
func checkAlerts(t *testing.T, ctx context.Context, prom *promServer, start, end time.Time, aTarget, bTarget string) {
	rules := alertRules(t)
	loaded, err := prom.rules(ctx)
	require.NoError(t, err)
	byName := map[string]promRule{}
	for _, r := range loaded {
		byName[r.Name] = r
	}
	require.Len(t, loaded, len(rules), "prometheus loaded every alert of alerts.yml")

	usedSelectors := map[string]bool{}
	for _, r := range rules {
		lr, ok := byName[r.Alert]
		if !ok {
			t.Errorf("%s: not loaded by prometheus", r.Alert)
			continue
		}
		if lr.Health != "ok" || lr.LastError != "" || lr.LastEvaluation.Before(start) {
			t.Errorf("%s: rule health %q, last error %q, last evaluated %s", r.Alert, lr.Health, lr.LastError, lr.LastEvaluation)
		}
		if _, err := prom.query(ctx, r.Expr, end); err != nil {
			t.Errorf("%s: %v\n\tquery: %s", r.Alert, err, r.Expr)
		}
		for _, s := range selectors(r.Expr) {
			usedSelectors[s] = true
			ss, err := prom.queryRange(ctx, s, start, end, promScrapeInterval)
			switch {
			case err != nil:
				t.Errorf("%s: selector %s: %v", r.Alert, s, err)
			case len(ss) == 0 && alertSelectorsOnlyUnderFailure[s] == "":
				t.Errorf("%s: selector %s matches no series, so the alert can never fire", r.Alert, s)
			}
		}
	}
	for s := range alertSelectorsOnlyUnderFailure {
		require.True(t, usedSelectors[s], "alertSelectorsOnlyUnderFailure names %s, which no alert uses", s)
	}

	// Only the alert the test caused fires, and only for the instance it
	// stopped: none fires on a healthy instance under load. (Pending ones
	// are only logged: on a busy machine one scrape may time out.)
	as, err := prom.alerts(ctx)
	require.NoError(t, err)
	var raised, firing []string
	for _, a := range as {
		desc := a.Labels["alertname"] + "{instance=" + a.Labels["instance"] + "} " + a.State
		raised = append(raised, desc)
		if a.State == "firing" {
			firing = append(firing, desc)
		}
	}
	t.Logf("alerts raised: %v", raised)
	require.Equal(t, []string{expectedAlert + "{instance=" + bTarget + "} firing"}, firing, "firing alerts (a.test is %s)", aTarget)
	// Its text names what it is about: every label its templates use is
	// on the alert (text/template writes <no value> for one that is not).
	for _, a := range as {
		if a.State != "firing" {
			continue
		}
		require.NotEmpty(t, a.Annotations["summary"])
		require.NotEmpty(t, a.Annotations["description"])
		for k, v := range a.Annotations {
			require.NotContains(t, v, "<no value>", "%s: annotation %s", expectedAlert, k)
		}
		require.Contains(t, a.Annotations["summary"], bTarget)
	}
}
