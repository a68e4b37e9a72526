package server_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
	"github.com/todeviced/todeviced/internal/testdb"
)

// get fetches a path of the metrics listener.
func get(t *testing.T, in *servertest.Instance, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(in.MetricsURL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// waitStatus polls path until it answers status and returns the body.
func waitStatus(t *testing.T, in *servertest.Instance, path string, status int) string {
	t.Helper()
	var body string
	servertest.WaitFor(t, path+" to answer "+http.StatusText(status), func() bool {
		var got int
		got, body = get(t, in, path)
		return got == status
	})
	return body
}

// sql runs statements on the test's PostgreSQL server as the superuser.
func sql(t *testing.T, dbURL string, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, s := range stmts {
		_, err := conn.Exec(ctx, s)
		require.NoError(t, err, s)
	}
}

func TestHealthzAndReadyz(t *testing.T) {
	reg := prometheus.NewRegistry()
	dbURL := testdb.New(t)
	in := servertest.Start(t, servertest.Config(dbURL), server.Options{Registry: reg})

	status, body := get(t, in, "/healthz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ok\n", body)
	require.Equal(t, "ready\n", waitStatus(t, in, "/readyz", http.StatusOK))
	require.Equal(t, 1.0, value(t, reg, "todeviced_database_ready", nil))

	// The database stops taking connections and drops the ones it has, as
	// a database that went away would.
	name := pgx.Identifier{testdb.DatabaseName(t, dbURL)}.Sanitize()
	base := testdb.Server(t)
	sql(t, base, "ALTER DATABASE "+name+" WITH ALLOW_CONNECTIONS false",
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "+
			"'"+testdb.DatabaseName(t, dbURL)+"' AND pid <> pg_backend_pid()")
	require.Contains(t, waitStatus(t, in, "/readyz", http.StatusServiceUnavailable), "database unreachable")
	require.Equal(t, 0.0, value(t, reg, "todeviced_database_ready", nil))
	status, _ = get(t, in, "/healthz")
	require.Equal(t, http.StatusOK, status, "the process is alive: restarting it would not bring the database back")

	sql(t, base, "ALTER DATABASE "+name+" WITH ALLOW_CONNECTIONS true")
	require.Equal(t, "ready\n", waitStatus(t, in, "/readyz", http.StatusOK), "ready again once the database is back")
	require.Equal(t, 1.0, value(t, reg, "todeviced_database_ready", nil))

	// A schema older than the binary is not ready either.
	sql(t, dbURL, `DELETE FROM goose_db_version WHERE version_id = (SELECT max(version_id) FROM goose_db_version)`)
	require.Contains(t, waitStatus(t, in, "/readyz", http.StatusServiceUnavailable), "1 migration(s) pending")
}

// The wake-up listener's state is a metric and an alert, never a readiness
// failure: polling covers for it, and a LISTEN flap must not take every
// replica out of the load balancer at once.
func TestReadyWhileListenerDown(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := servertest.Config(testdb.New(t))
	cfg.Migrate = false                                                               // migrating would go through the direct URL
	cfg.DatabaseDirectURL = "postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable" // nothing listens on port 1
	in := servertest.Start(t, cfg, server.Options{Registry: reg})
	require.Equal(t, "ready\n", waitStatus(t, in, "/readyz", http.StatusOK))
	require.Equal(t, 0.0, value(t, reg, "todeviced_listener_up", nil))

	// The API serves meanwhile.
	in.PutDevice(t, "@a:localhost", "A", "tok-a")
	in.PutDevice(t, "@b:localhost", "B", "tok-b")
	in.Send(t, "tok-a", "m.test", "t1", map[string]map[string]any{"@b:localhost": {"B": map[string]any{"n": 1}}})
	require.Len(t, in.Sync(t, "tok-b", "", 0).ToDevice.Events, 1)
}
