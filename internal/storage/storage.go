// Package storage opens the backend that --database-url names: PostgreSQL
// (postgres:// or postgresql://) or embedded SQLite (sqlite:PATH). Domain
// packages see only their store interfaces; this package is where a URL
// becomes one of the implementations.
package storage

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/storage/sqlite"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Backend is an open database.
type Backend interface {
	// Kind is "postgres" or "sqlite".
	Kind() string
	Epoch() string
	Inbox() inbox.Store
	Devices() devicelists.Store
	Federation() federation.Store
	// Start begins delivering wake-ups to the hub (LISTEN on PostgreSQL).
	Start(ctx context.Context)
	Ping(ctx context.Context) error
	// Pending is the number of migrations not yet applied.
	Pending(ctx context.Context) (int, error)
	Close()
}

// Options configure Open.
type Options struct {
	URL       string
	DirectURL string
	// MaxConns caps the connection pool (on SQLite: the read pool).
	MaxConns int32
	Migrate  bool
	// Exclusive says this process is the server. On SQLite, where one
	// process serves a database file, Open then takes the file's server lock
	// and refuses to open a file another server holds; tools that write
	// beside a running server (migrate, device add) leave it false.
	// PostgreSQL serves any number of replicas and ignores it.
	Exclusive bool
	Hub       *wakeup.Hub
	Logger    *slog.Logger
	// CallTimeout bounds every call of the inbox, device-list and
	// federation stores (--database-timeout); 0 leaves them unbounded.
	CallTimeout time.Duration
	// InboxHooks and DeviceListHooks are for tests.
	InboxHooks      inbox.Hooks
	DeviceListHooks devicelists.Hooks
	OnListenerState func(up bool)
	// PostgresTracer, a test hook, sees every query and pipeline of the
	// PostgreSQL pool (postgres.Options.Tracer); SQLite ignores it.
	PostgresTracer pgx.QueryTracer
}

// Kind returns the backend a database URL names, or an error naming the
// setting.
func Kind(url string) (string, error) {
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return "postgres", nil
	case strings.HasPrefix(url, "sqlite:"):
		if _, err := sqlite.ParseURL(url); err != nil {
			return "", fmt.Errorf("--database-url: %w", err)
		}
		return "sqlite", nil
	}
	return "", fmt.Errorf("--database-url %q: want postgres://…, postgresql://… or sqlite:PATH", redact(url))
}

// Open opens the backend opts.URL names.
func Open(ctx context.Context, opts Options) (Backend, error) {
	kind, err := Kind(opts.URL)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "postgres":
		db, err := postgres.Open(ctx, postgres.Options{
			URL: opts.URL, DirectURL: opts.DirectURL, MaxConns: opts.MaxConns, Migrate: opts.Migrate,
			Hub: opts.Hub, Logger: opts.Logger, InboxHooks: opts.InboxHooks, DeviceListHooks: opts.DeviceListHooks,
			OnListenerState: opts.OnListenerState, CallTimeout: opts.CallTimeout, Tracer: opts.PostgresTracer,
		})
		if err != nil {
			return nil, err
		}
		return pgBackend{db, deadline(opts.CallTimeout)}, nil
	case "sqlite":
		path, err := sqlite.ParseURL(opts.URL)
		if err != nil {
			return nil, fmt.Errorf("--database-url: %w", err)
		}
		// A statement waiting for another process's lock gives up with the
		// call that waits for it.
		busy := sqlite.DefaultBusyTimeout
		if opts.CallTimeout > 0 {
			busy = min(busy, opts.CallTimeout)
		}
		db, err := sqlite.Open(ctx, sqlite.Options{
			Path: path, Migrate: opts.Migrate, Exclusive: opts.Exclusive, MaxReaders: int(opts.MaxConns), BusyTimeout: busy,
			Hub: opts.Hub, Logger: opts.Logger, InboxHooks: opts.InboxHooks, DeviceListHooks: opts.DeviceListHooks,
		})
		if err != nil {
			return nil, err
		}
		return sqliteBackend{db, deadline(opts.CallTimeout)}, nil
	}
	return nil, fmt.Errorf("--database-url: the %s backend is not available in this build", kind)
}

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

// Migrate applies pending migrations to the database url names.
func Migrate(ctx context.Context, url, directURL string, log *slog.Logger) (int, error) {
	kind, err := Kind(url)
	if err != nil {
		return 0, err
	}
	if directURL == "" {
		directURL = url
	}
	switch kind {
	case "postgres":
		return postgres.Migrate(ctx, directURL, log)
	case "sqlite":
		path, err := sqlite.ParseURL(url)
		if err != nil {
			return 0, fmt.Errorf("--database-url: %w", err)
		}
		return sqlite.Migrate(ctx, path, log)
	}
	return 0, fmt.Errorf("--database-url: the %s backend is not available in this build", kind)
}

// Status lists the migrations of the database url names.
func Status(ctx context.Context, url, directURL string) ([]MigrationStatus, error) {
	kind, err := Kind(url)
	if err != nil {
		return nil, err
	}
	if directURL == "" {
		directURL = url
	}
	switch kind {
	case "postgres":
		st, err := postgres.Status(ctx, directURL)
		if err != nil {
			return nil, err
		}
		out := make([]MigrationStatus, len(st))
		for i, s := range st {
			out[i] = MigrationStatus(s)
		}
		return out, nil
	case "sqlite":
		path, err := sqlite.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("--database-url: %w", err)
		}
		st, err := sqlite.Status(ctx, path)
		if err != nil {
			return nil, err
		}
		out := make([]MigrationStatus, len(st))
		for i, s := range st {
			out[i] = MigrationStatus(s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("--database-url: the %s backend is not available in this build", kind)
}

type pgBackend struct {
	*postgres.DB
	d deadline
}

func (pgBackend) Kind() string { return "postgres" }

func (b pgBackend) Inbox() inbox.Store         { return timedStores(b.d).inbox(b.DB.Inbox()) }
func (b pgBackend) Devices() devicelists.Store { return timedStores(b.d).devices(b.DB.Devices()) }
func (b pgBackend) Federation() federation.Store {
	return federation.NewStore(timedStores(b.d).federation(b.DB.FederationDB()))
}

// Postgres returns the PostgreSQL handle (tests and benchmarks use its pool).
func (b pgBackend) Postgres() *postgres.DB { return b.DB }

type sqliteBackend struct {
	*sqlite.DB
	d deadline
}

func (sqliteBackend) Kind() string { return "sqlite" }

func (b sqliteBackend) Inbox() inbox.Store         { return timedStores(b.d).inbox(b.DB.Inbox()) }
func (b sqliteBackend) Devices() devicelists.Store { return timedStores(b.d).devices(b.DB.Devices()) }
func (b sqliteBackend) Federation() federation.Store {
	return federation.NewStore(timedStores(b.d).federation(b.DB.FederationDB()))
}

// timedStores wraps a backend's stores so every call has a deadline (none
// when it is 0).
type timedStores deadline

func (d timedStores) inbox(s inbox.Store) inbox.Store {
	if d <= 0 {
		return s
	}
	return timedInbox{s, deadline(d)}
}

func (d timedStores) devices(s devicelists.Store) devicelists.Store {
	if d <= 0 {
		return s
	}
	return timedDevices{s, deadline(d)}
}

func (d timedStores) federation(db federation.Database) federation.Database {
	if d <= 0 {
		return db
	}
	return timedFederationDB{db, deadline(d)}
}

// SQLite returns the SQLite handle (tests and benchmarks use it).
func (b sqliteBackend) SQLite() *sqlite.DB { return b.DB }

// redact hides a password in a URL for error messages.
func redact(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			if colon := strings.IndexByte(rest[:at], ':'); colon >= 0 {
				return u[:i+3] + rest[:colon] + ":***" + rest[at:]
			}
		}
	}
	return u
}

// Redact hides a password in a database URL, for logs.
func Redact(u string) string { return redact(u) }
