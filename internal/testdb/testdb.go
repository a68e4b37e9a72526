// Package testdb gives tests their own PostgreSQL databases.
//
// The server is found through TODEVICED_TEST_DATABASE_URL; without it, one is
// started with testcontainers-go where Docker runs; without either, tests that
// need PostgreSQL skip — except under CI=true, where they fail. Each test gets
// a fresh database cloned from a migrated template and dropped afterwards, so
// tests run in parallel and leave nothing behind.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"go.uber.org/goleak"

	"github.com/todeviced/todeviced/internal/storage/postgres"
)

// EnvURL names the PostgreSQL server tests use.
const EnvURL = "TODEVICED_TEST_DATABASE_URL"

const (
	prefix        = "todeviced_t_"
	tplPrefix     = "todeviced_tpl_"
	staleAfter    = 3 * time.Hour
	createTimeout = 2 * time.Minute
)

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
	container  *tcpostgres.PostgresContainer

	tplOnce sync.Once
	tplName string
	tplErr  error
	tplMu   sync.Mutex // CREATE DATABASE ... TEMPLATE wants the template idle
)

// Main runs the package's tests and then removes what testdb created
// process-wide (the template database, a container). Use it from TestMain.
//
// It also fails a passing run that leaves goroutines behind (goleak): every
// package whose tests start servers, pools or background jobs uses it, and
// a goroutine that outlives its test is a leak in the code or the test.
func Main(m *testing.M) int {
	code := m.Run()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if tplName != "" && serverURL != "" {
		if err := exec(ctx, serverURL, "DROP DATABASE IF EXISTS "+pgx.Identifier{tplName}.Sanitize()+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(os.Stderr, "testdb: dropping template %s: %v\n", tplName, err)
		}
	}
	if container != nil {
		_ = testcontainers.TerminateContainer(container)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "testdb: goroutines left behind: %v\n", err)
			code = 1
		}
	}
	return code
}

// Available reports whether a PostgreSQL server can be had, starting a
// container if needed, and why not.
func Available() (string, error) {
	serverOnce.Do(func() {
		if u := os.Getenv(EnvURL); u != "" {
			serverURL = u
			return
		}
		serverURL, serverErr = startContainer()
	})
	return serverURL, serverErr
}

func startContainer() (u string, err error) {
	defer func() {
		if r := recover(); r != nil { // testcontainers panics without Docker
			err = fmt.Errorf("no Docker: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	p, err := testcontainers.ProviderDefault.GetProvider()
	if err != nil {
		return "", fmt.Errorf("no Docker: %w", err)
	}
	defer p.Close()
	if err := p.Health(ctx); err != nil {
		return "", fmt.Errorf("no Docker: %w", err)
	}
	c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
		tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies())
	if err != nil {
		return "", fmt.Errorf("starting PostgreSQL container: %w", err)
	}
	container = c
	return c.ConnectionString(ctx, "sslmode=disable")
}

// Server returns the server URL or skips the test (fails it under CI=true).
func Server(t testing.TB) string {
	t.Helper()
	u, err := Available()
	if err != nil {
		msg := fmt.Sprintf("PostgreSQL tests need a server: set %s=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable or run Docker (%v)", EnvURL, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return u
}

// New creates a fresh, migrated database for this test and returns its URL.
// The database has an epoch of its own, as a freshly migrated one would.
func New(t testing.TB) string {
	t.Helper()
	base := Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	tplOnce.Do(func() { tplErr = makeTemplate(ctx, base) })
	if tplErr != nil {
		t.Fatalf("testdb: making template database: %v", tplErr)
	}
	name := newName(prefix)
	tplMu.Lock()
	err := exec(ctx, base, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{tplName}.Sanitize())
	tplMu.Unlock()
	if err != nil {
		t.Fatalf("testdb: creating database: %v", err)
	}
	u := WithDatabase(base, name)
	t.Cleanup(func() { Drop(t, base, name) })
	if err := exec(ctx, u, `UPDATE meta SET epoch = substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)`); err != nil {
		t.Fatalf("testdb: new epoch: %v", err)
	}
	return u
}

// NewEmpty creates an empty database (no schema) for this test.
func NewEmpty(t testing.TB) string {
	t.Helper()
	base := Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	name := newName(prefix)
	if err := exec(ctx, base, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testdb: creating database: %v", err)
	}
	t.Cleanup(func() { Drop(t, base, name) })
	return WithDatabase(base, name)
}

// Recreate drops the database at dbURL and creates it again, empty, as an
// operator restoring or rebuilding a database would.
func Recreate(t testing.TB, dbURL string) {
	t.Helper()
	base := Server(t)
	name := DatabaseName(t, dbURL)
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	if err := exec(ctx, base, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatalf("testdb: dropping database: %v", err)
	}
	if err := exec(ctx, base, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testdb: creating database: %v", err)
	}
}

// Drop removes a database, disconnecting its sessions.
func Drop(t testing.TB, base, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := exec(ctx, base, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("testdb: dropping database %s: %v", name, err)
	}
}

// DatabaseName returns the database a URL names.
func DatabaseName(t testing.TB, dbURL string) string {
	t.Helper()
	cc, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return cc.Database
}

// WithDatabase returns base with its database replaced by name.
func WithDatabase(base, name string) string {
	if u, err := url.Parse(base); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + name
		return u.String()
	}
	// keyword=value form
	return base + " dbname=" + name
}

func makeTemplate(ctx context.Context, base string) error {
	sweep(ctx, base)
	name := newName(tplPrefix)
	if err := exec(ctx, base, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return err
	}
	tplName = name
	_, err := postgres.Migrate(ctx, WithDatabase(base, name), slog.New(slog.DiscardHandler))
	return err
}

// sweep drops databases left behind by test processes that died long ago.
func sweep(ctx context.Context, base string) {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'todeviced\_t%'`)
	if err != nil {
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		rest := strings.TrimPrefix(strings.TrimPrefix(n, tplPrefix), prefix)
		ts, _, _ := strings.Cut(rest, "_")
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || time.Since(time.Unix(sec, 0)) < staleAfter {
			continue
		}
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()+" WITH (FORCE)")
	}
}

func newName(p string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return p + strconv.FormatInt(time.Now().Unix(), 10) + "_" + hex.EncodeToString(b[:])
}

func exec(ctx context.Context, dbURL, sql string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}
