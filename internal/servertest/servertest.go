// Package servertest starts real todeviced instances in-process for tests:
// the real router on a loopback listener, the real background jobs, a real
// database. Tests talk to them over HTTP like any client would.
package servertest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/testdb"
)

// Secret is the internal API secret of test instances.
const Secret = "test-internal-secret"

// Config returns a configuration for a test instance on dbURL: loopback
// listeners on free ports, the internal API on, server name localhost.
func Config(dbURL string) server.Config {
	cfg := server.Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.DatabaseURL = dbURL
	cfg.InternalSecret = Secret
	cfg.ShutdownTimeout = 5 * time.Second
	return cfg
}

// Instance is one running todeviced.
type Instance struct {
	*server.Server
	URL        string
	MetricsURL string
	Config     server.Config
	cancel     context.CancelFunc
	done       chan error
	client     *http.Client
}

// Logger returns a logger for test instances: quiet unless
// TODEVICED_TEST_LOG is set.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("TODEVICED_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Start runs an instance until the test ends.
func Start(t testing.TB, cfg server.Config, opts server.Options) *Instance {
	t.Helper()
	return StartLogged(t, cfg, opts, Logger(t))
}

// StartLogged is Start with the instance logging to log (tests of the logs).
func StartLogged(t testing.TB, cfg server.Config, opts server.Options, log *slog.Logger) *Instance {
	t.Helper()
	apiLn, err := net.Listen("tcp", cfg.Listen)
	require.NoError(t, err)
	var metricsLn net.Listener
	if cfg.MetricsListen != "" {
		metricsLn, err = net.Listen("tcp", cfg.MetricsListen)
		require.NoError(t, err)
	}
	return StartOn(t, cfg, opts, log, apiLn, metricsLn)
}

// StartOn is StartLogged on listeners the caller opened (metricsLn may be
// nil: no metrics server). Federating instances need it: each one's
// address goes into the other's configuration before either starts.
func StartOn(t testing.TB, cfg server.Config, opts server.Options, log *slog.Logger, apiLn, metricsLn net.Listener) *Instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, log, opts)
	if err != nil {
		cancel()
		apiLn.Close()
		if metricsLn != nil {
			metricsLn.Close()
		}
		t.Fatalf("servertest: starting todeviced: %v", err)
	}
	in := &Instance{
		Server: srv, URL: "http://" + apiLn.Addr().String(), Config: cfg, cancel: cancel,
		done:   make(chan error, 1),
		client: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
	}
	if metricsLn != nil {
		in.MetricsURL = "http://" + metricsLn.Addr().String()
	}
	go func() { in.done <- srv.ServeListeners(ctx, apiLn, metricsLn) }()
	t.Cleanup(func() { in.Stop(t) })
	return in
}

// Stop shuts the instance down gracefully and waits for it. Idempotent.
func (in *Instance) Stop(t testing.TB) {
	in.cancel()
	if in.done != nil {
		if err := <-in.done; err != nil {
			t.Errorf("servertest: serving: %v", err)
		}
		in.done = nil
	}
	in.client.CloseIdleConnections()
}

// Response is an HTTP answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic map.
func (r Response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &m), "body %s", r.Body)
	return m
}

// Errcode returns the errcode of an error body.
func (r Response) Errcode(t testing.TB) string {
	t.Helper()
	s, _ := r.JSON(t)["errcode"].(string)
	return s
}

// Do sends a request with a bearer token; body may be nil, []byte, string or
// a value to encode as JSON.
func (in *Instance) Do(t testing.TB, method, path, token string, body any) Response {
	t.Helper()
	return in.DoContext(context.Background(), t, method, path, token, body)
}

// DoContext is Do with a context (a long-poll the test abandons).
func (in *Instance) DoContext(ctx context.Context, t testing.TB, method, path, token string, body any) Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		enc, err := json.Marshal(b)
		require.NoError(t, err)
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequestWithContext(ctx, method, in.URL+path, rd)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := in.client.Do(req)
	require.NoError(t, err, "%s %s", method, path)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// PutDevice creates a device through the internal API with token.
func (in *Instance) PutDevice(t testing.TB, userID, deviceID, token string) {
	t.Helper()
	r := in.Do(t, http.MethodPut, "/_todeviced/internal/v1/users/"+url.PathEscape(userID)+"/devices/"+url.PathEscape(deviceID), Secret,
		map[string]any{"access_token": token})
	require.Equal(t, http.StatusOK, r.Status, "creating device: %s", r.Body)
}

// DeleteDevice deletes a device through the internal API.
func (in *Instance) DeleteDevice(t testing.TB, userID, deviceID string) Response {
	t.Helper()
	return in.Do(t, http.MethodDelete, "/_todeviced/internal/v1/users/"+url.PathEscape(userID)+"/devices/"+url.PathEscape(deviceID), Secret, nil)
}

// Send sends one sendToDevice request and requires 200.
func (in *Instance) Send(t testing.TB, token, eventType, txnID string, messages map[string]map[string]any) {
	t.Helper()
	r := in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/"+url.PathEscape(eventType)+"/"+url.PathEscape(txnID), token,
		map[string]any{"messages": messages})
	require.Equal(t, http.StatusOK, r.Status, "sendToDevice: %s", r.Body)
}

// SyncResponse is the part of a /sync answer todeviced fills.
type SyncResponse struct {
	NextBatch string `json:"next_batch"`
	ToDevice  struct {
		Events []Event `json:"events"`
	} `json:"to_device"`
	DeviceLists struct {
		Changed []string `json:"changed"`
		Left    []string `json:"left"`
	} `json:"device_lists"`
}

// Event is a to-device event.
type Event struct {
	Sender  string         `json:"sender"`
	Type    string         `json:"type"`
	Content map[string]any `json:"content"`
}

// Sync calls /sync and requires 200.
func (in *Instance) Sync(t testing.TB, token, since string, timeout time.Duration) SyncResponse {
	t.Helper()
	r := in.RawSync(context.Background(), t, token, since, timeout)
	require.Equal(t, http.StatusOK, r.Status, "sync: %s", r.Body)
	var s SyncResponse
	require.NoError(t, json.Unmarshal(r.Body, &s))
	return s
}

// RawSync calls /sync and returns whatever it answered.
func (in *Instance) RawSync(ctx context.Context, t testing.TB, token, since string, timeout time.Duration) Response {
	t.Helper()
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	q.Set("timeout", itoa(timeout.Milliseconds()))
	return in.DoContext(ctx, t, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), token, nil)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// WaitFor polls cond until it holds (a hang fails the test at its deadline).
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Backend is a kind of database the HTTP tests run against.
type Backend struct {
	Name string
	// NewURL returns a fresh database for the test.
	NewURL func(t *testing.T) string
	// MultiInstance is true when replicas may share the database.
	MultiInstance bool
}

// Backends lists the backends every HTTP test runs on.
func Backends() []Backend {
	return []Backend{
		{Name: "postgres", NewURL: func(t *testing.T) string { return testdb.New(t) }, MultiInstance: true},
		// A fresh file per test, migrated when the instance starts. One
		// process serves a file (wake-ups are in-process), so tests that
		// need two instances on one database skip it.
		{Name: "sqlite", NewURL: func(t *testing.T) string {
			return "sqlite:" + filepath.Join(t.TempDir(), "todeviced.db")
		}, MultiInstance: false},
	}
}

// EachBackend runs fn as a parallel subtest per backend.
func EachBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	for _, b := range Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

// Exercise drives the instance through the paths that create labelled
// metrics (a send, its retry, a sync that delivers, one that acknowledges,
// an unknown route and a bad token), so every vector that a request can
// touch has children when the registry is gathered.
func (in *Instance) Exercise(t testing.TB) {
	t.Helper()
	const sender, recipient = "@exercise-a:localhost", "@exercise-b:localhost"
	in.PutDevice(t, sender, "EA", "tok-exercise-a")
	in.PutDevice(t, recipient, "EB", "tok-exercise-b")
	first := in.Sync(t, "tok-exercise-b", "", 0)
	msgs := map[string]map[string]any{recipient: {"EB": map[string]any{"n": 1}}, "@nobody:localhost": {"X": map[string]any{}}}
	in.Send(t, "tok-exercise-a", "m.test", "exercise-1", msgs)
	in.Send(t, "tok-exercise-a", "m.test", "exercise-1", msgs) // a retry: a duplicate
	got := in.Sync(t, "tok-exercise-b", first.NextBatch, 0)
	require.Len(t, got.ToDevice.Events, 1)
	in.Sync(t, "tok-exercise-b", got.NextBatch, 0) // acknowledges
	require.Equal(t, http.StatusNotFound, in.Do(t, http.MethodGet, "/no/such/route", "", nil).Status)
	require.Equal(t, http.StatusUnauthorized, in.Do(t, http.MethodGet, "/_matrix/client/v3/sync", "wrong-token", nil).Status)
}
