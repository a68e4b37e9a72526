package server_test

import (
	"os"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// startWired starts a fully wired instance on a registry of the test's own
// and drives it through every path that creates metric children.
func startWired(t *testing.T, b servertest.Backend) (*servertest.Instance, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	in := servertest.Start(t, servertest.Config(b.NewURL(t)), server.Options{Registry: reg, Version: "v9.9.9-test"})
	in.Exercise(t)
	return in, reg
}

// family returns the gathered family called name, failing when it is absent.
func family(t *testing.T, reg prometheus.Gatherer, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	require.Failf(t, "metric missing", "%s is not in the registry", name)
	return nil
}

// value returns the value of the series of name whose labels include want.
func value(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	for _, m := range family(t, reg, name).GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		}
	}
	require.Failf(t, "series missing", "%s%v", name, want)
	return 0
}

// TestRegistryPassesPromlint lints every metric a wired, exercised server
// exports (ours and the Go and process collectors') with the linter that
// Prometheus itself ships: names, units, _total suffixes, help texts.
func TestRegistryPassesPromlint(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		_, reg := startWired(t, b)
		problems, err := testutil.GatherAndLint(reg)
		require.NoError(t, err)
		for _, p := range problems {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	})
}

func TestBuildInfoAndPoolMetrics(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		_, reg := startWired(t, b)
		require.Equal(t, 1.0, value(t, reg, "todeviced_build_info",
			map[string]string{"version": "v9.9.9-test", "goversion": runtime.Version(), "backend": b.Name}))

		require.Positive(t, value(t, reg, "todeviced_db_pool_max_connections", nil))
		require.Positive(t, value(t, reg, "todeviced_db_pool_connections", map[string]string{"state": "idle"})+
			value(t, reg, "todeviced_db_pool_connections", map[string]string{"state": "acquired"}),
			"the exercise left connections open")
		for _, state := range []string{"acquired", "idle", "constructing"} {
			value(t, reg, "todeviced_db_pool_connections", map[string]string{"state": state})
		}
		require.Equal(t, dto.MetricType_COUNTER, family(t, reg, "todeviced_db_pool_empty_acquires_total").GetType())
		require.Equal(t, dto.MetricType_COUNTER, family(t, reg, "todeviced_db_pool_acquire_wait_seconds_total").GetType())
		if b.Name == "postgres" { // pgxpool counts every acquisition; database/sql does not
			require.Positive(t, value(t, reg, "todeviced_db_pool_acquires_total", nil))
			value(t, reg, "todeviced_db_pool_canceled_acquires_total", nil)
		}
		// Sends written together (their counting: TestGroupAccept on
		// PostgreSQL, TestGroupCommit on SQLite).
		require.Equal(t, dto.MetricType_COUNTER, family(t, reg, "todeviced_send_groups_total").GetType())
		require.Equal(t, dto.MetricType_COUNTER, family(t, reg, "todeviced_send_grouped_total").GetType())

		// The exercise's flow shows up in the inbox counters.
		require.Equal(t, 1.0, value(t, reg, "todeviced_messages_enqueued_total", map[string]string{"origin": "local"}))
		require.Equal(t, 1.0, value(t, reg, "todeviced_messages_delivered_total", nil))
		require.Equal(t, 1.0, value(t, reg, "todeviced_messages_acknowledged_total", nil))
		require.Equal(t, 1.0, value(t, reg, "todeviced_messages_dropped_total", map[string]string{"reason": "unknown_device"}))
		require.Equal(t, 1.0, value(t, reg, "todeviced_send_duplicates_total", nil))
		require.Equal(t, 1.0, value(t, reg, "todeviced_http_requests_total",
			map[string]string{"route": "unmatched", "method": "GET", "code": "404"}), "an unknown path is labelled unmatched, never by itself")
	})
}
