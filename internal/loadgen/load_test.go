//go:build load

// The load test runs only with -tags load (go test -tags load -run Load
// ./internal/loadgen/): it takes seconds of full CPU and a PostgreSQL server,
// which the default test run should not.

package loadgen_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/loadgen"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

const secret = "load-test-secret"

// startServer runs todeviced in-process on a loopback port until the test
// ends and returns its URL.
func startServer(t *testing.T, dbURL string) string {
	t.Helper()
	cfg := server.Defaults()
	cfg.DatabaseURL = dbURL
	cfg.InternalSecret = secret
	cfg.MetricsListen = ""
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, nil, server.Options{})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.ServeListeners(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	return "http://" + ln.Addr().String()
}

// TestLoadInProcess runs a short verified load through the same code as
// todeviced-load, with some sync responses thrown away unprocessed so the
// redelivery path is exercised, and with the COPY baseline.
func TestLoadInProcess(t *testing.T) {
	dbURL := testdb.New(t)
	url := startServer(t, dbURL)

	cfg := loadgen.Defaults()
	cfg.URL = url
	cfg.InternalSecret = secret
	cfg.Users = 20
	cfg.DevicesPerUser = 2
	cfg.Senders = 4
	cfg.Fanout = 3
	cfg.Duration = 3 * time.Second
	cfg.SyncTimeout = 5 * time.Second
	cfg.SyncDropRate = 0.05
	cfg.Baseline = true
	cfg.DatabaseURL = dbURL
	// Deleting the devices would purge their inboxes and hide rows left
	// behind; the test database is dropped anyway.
	cfg.KeepDevices = true
	var csv bytes.Buffer
	cfg.CSV = &csv

	r, err := loadgen.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := r.Run(ctx)
	require.NoError(t, err)

	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	t.Log("\n" + table.String())
	v := rep.Verdict
	assert.True(t, v.OK, "verification failed: %+v", v)
	assert.True(t, rep.Drained)
	assert.Positive(t, rep.Sends)
	assert.Equal(t, rep.Sends*int64(cfg.Fanout), v.Expected)
	assert.Equal(t, v.Expected, v.Delivered)
	assert.Zero(t, v.Lost+v.Duplicates+v.Reordered+v.Unexpected+v.Corrupt+v.UnconfirmedSends)
	if rep.DroppedResponses > 0 {
		assert.Positive(t, v.Redelivered, "dropped responses must come back")
	}
	assert.Equal(t, uint64(rep.Delivered), rep.Latency.Count)
	require.NotNil(t, rep.Baseline)
	assert.Equal(t, rep.Sends, rep.Baseline.Sends)
	assert.True(t, strings.HasPrefix(csv.String(), "elapsed_s,phase,"), csv.String())

	// Nothing is left behind: the syncers acknowledged everything and the
	// baseline rows were deleted.
	assertInboxEmpty(t, ctx, dbURL, r.RunID())
}

// TestLoadCountedMessages runs by message count at a set rate.
func TestLoadCountedMessages(t *testing.T) {
	dbURL := testdb.New(t)
	cfg := loadgen.Defaults()
	cfg.URL = startServer(t, dbURL)
	cfg.InternalSecret = secret
	cfg.Users = 5
	cfg.DevicesPerUser = 3
	cfg.Senders = 3
	cfg.Fanout = 15 // every device
	cfg.Duration = 0
	cfg.Messages = 150
	cfg.Rate = 200
	r, err := loadgen.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := r.Run(ctx)
	require.NoError(t, err)
	assert.True(t, rep.Verdict.OK, "%+v", rep.Verdict)
	assert.Equal(t, int64(150), rep.Sends)
	assert.Equal(t, int64(150*15), rep.Verdict.Delivered)
}

func assertInboxEmpty(t *testing.T, ctx context.Context, dbURL, run string) {
	t.Helper()
	n, err := countRows(ctx, dbURL, "@load-"+run+"-%")
	require.NoError(t, err)
	assert.Zero(t, n, "inbox rows of the run left behind")
}

func countRows(ctx context.Context, dbURL, userPattern string) (int64, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, `SELECT count(*) FROM device_inbox WHERE user_id LIKE $1`, userPattern).Scan(&n)
	return n, err
}
