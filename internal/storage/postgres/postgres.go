// Package postgres is todeviced's PostgreSQL backend (pgx v5, pgxpool): the
// production store. It implements the store interfaces of the domain
// packages, runs the migrations in sql/postgres, and feeds the wake-up hub
// from LISTEN/NOTIFY so long-polls wake on whichever replica they wait.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Options configure Open.
type Options struct {
	// URL is the connection string of the pool (may go through a
	// transaction-pooling proxy).
	URL string
	// DirectURL reaches PostgreSQL without a transaction-pooling proxy; LISTEN
	// and session advisory locks need it. Defaults to URL.
	DirectURL string
	// MaxConns caps the pool (0: DefaultMaxConns).
	MaxConns int32
	// Migrate applies pending migrations before anything else.
	Migrate bool
	// Hub is woken by notifications; nil disables listening.
	Hub    *wakeup.Hub
	Logger *slog.Logger
	// InboxHooks are test hooks for the inbox store.
	InboxHooks inbox.Hooks
	// BeforeGroupCommit, a test hook, runs before the last round trip of a
	// group of sends written together (group.go); an error fails the group.
	BeforeGroupCommit func(ctx context.Context, sends int) error
	// DeviceListHooks are test hooks for the device-list store.
	DeviceListHooks devicelists.Hooks
	// OnListenerState is told whether the LISTEN connection is up.
	OnListenerState func(up bool)
	// InboxWrite chooses how Accept writes inbox rows (benchmarks compare
	// them); the zero value is the default, WriteAuto.
	InboxWrite WriteStrategy
	// CallTimeout is --database-timeout. The storage package puts it on
	// every store call; here it bounds each group of sends written together
	// (a group outlives the request that started it, so it cannot take that
	// request's deadline) and becomes the pool's statement_timeout (unless
	// the URL sets one), so a statement stuck behind a lock ends on the
	// server too, not only in the client that gave up on it.
	CallTimeout time.Duration
	// Tracer, a test hook, sees every query and pipeline the pool's
	// connections send (tests count a request's round trips with it).
	Tracer pgx.QueryTracer
}

// WriteStrategy is a way of writing a fan-out's inbox rows.
type WriteStrategy int

const (
	// WriteAuto uses WriteUnnest below CopyThreshold rows and WriteCopy
	// from there on.
	WriteAuto WriteStrategy = iota
	// WriteUnnest inserts every row with one INSERT … SELECT FROM unnest(…)
	// of arrays, pipelined with the transaction's other writes.
	WriteUnnest
	// WriteCopy streams the rows with COPY FROM STDIN: one extra round trip,
	// no per-row SQL.
	WriteCopy
)

// CopyThreshold is the fan-out from which COPY beats unnest: below it the
// extra round trip of COPY costs more than the per-row work it saves
// (measured with BenchmarkAcceptVia{Unnest,Copy}: even at 400 devices,
// unnest ahead at 200, COPY 20–40 % ahead at 600 and 1 000).
const CopyThreshold = 400

// DefaultMaxConns sizes the pool when --database-max-conns is 0: four
// connections per CPU, at least 16. A connection is busy mostly waiting (for
// the network, for a commit to reach the disk), not computing, and pgxpool's
// own default (one per CPU, at least 4) queues requests behind a handful of
// commits; after a restart every client's long-poll arrives at once, and
// thousands of them queued on four connections take seconds to drain.
func DefaultMaxConns() int32 {
	return int32(max(16, 4*runtime.GOMAXPROCS(0)))
}

// DB is an open PostgreSQL backend.
type DB struct {
	pool      *pgxpool.Pool
	opts      Options
	log       *slog.Logger
	epoch     string
	hub       *wakeup.Hub
	origin    string // leads this replica's NOTIFY payloads (notify.go)
	listener  *listener
	cancel    context.CancelFunc
	listening chan struct{}

	// acceptQueue holds sends waiting to be written in a group (group.go).
	acceptQueue acceptQueue
	// sendGroups counts groups of several sends written together, and
	// groupedSends the sends in them.
	sendGroups, groupedSends atomic.Int64
}

// SendGroups reports how many groups of two or more sends were written in
// one transaction each, and how many sends they held.
func (db *DB) SendGroups() (groups, sends int64) {
	return db.sendGroups.Load(), db.groupedSends.Load()
}

// Open connects, migrates when asked, and loads the epoch. Call Start to begin
// listening for wake-ups and Close when done.
func Open(ctx context.Context, opts Options) (*DB, error) {
	if opts.DirectURL == "" {
		opts.DirectURL = opts.URL
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Migrate {
		if _, err := Migrate(ctx, opts.DirectURL, opts.Logger); err != nil {
			return nil, err
		}
	}
	cfg, err := pgxpool.ParseConfig(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	cfg.MaxConns = DefaultMaxConns()
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "todeviced"
	cfg.ConnConfig.Tracer = opts.Tracer
	if _, set := cfg.ConnConfig.RuntimeParams["statement_timeout"]; !set && opts.CallTimeout > 0 {
		// A little longer than the client's deadline, so the client gives up
		// first (and answers 503) while the server still ends the statement
		// it left behind.
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt((opts.CallTimeout + time.Second).Milliseconds(), 10)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating connection pool: %w", err)
	}
	db := &DB{pool: pool, opts: opts, log: opts.Logger, hub: opts.Hub, origin: newOrigin()}
	if db.hub != nil {
		// Until the listener listens (Start), commits of other replicas go
		// unheard.
		db.hub.SetDeaf(true)
	}
	if err := pool.QueryRow(ctx, `SELECT epoch FROM meta`).Scan(&db.epoch); err != nil {
		pool.Close()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return nil, errors.New("the database has no todeviced schema: run `todeviced migrate` or start with --migrate")
		}
		var connErr *pgconn.ConnectError
		if errors.As(err, &connErr) {
			return nil, connecting(&cfg.ConnConfig.Config, err)
		}
		return nil, fmt.Errorf("reading database epoch: %w", err)
	}
	return db, nil
}

// connecting names the server a failed first connection was for: its host
// and port, never the URL (which may hold a password).
func connecting(cc *pgconn.Config, err error) error {
	return fmt.Errorf("connecting to PostgreSQL at %s: %w", net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))), err)
}

// Start begins listening for wake-up notifications on a direct connection.
// It returns at once; the listener reconnects on its own until Close.
func (db *DB) Start(ctx context.Context) {
	if db.hub == nil || db.listener != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	db.cancel = cancel
	db.listener = &listener{url: db.opts.DirectURL, origin: db.origin, hub: db.hub, log: db.log, onState: db.opts.OnListenerState}
	db.listening = make(chan struct{})
	go func() {
		defer close(db.listening)
		db.listener.run(ctx)
	}()
}

// Close stops the listener and closes the pool.
func (db *DB) Close() {
	if db.cancel != nil {
		db.cancel()
		<-db.listening
	}
	db.pool.Close()
}

// Pool exposes the pool for benchmarks, tests and pool metrics.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Epoch is the database epoch.
func (db *DB) Epoch() string { return db.epoch }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.pool.Ping(ctx) }

// Inbox returns the inbox store.
func (db *DB) Inbox() inbox.Store {
	return &inboxStore{Upkeep: inbox.NewUpkeep(inboxDB{db}), db: db, hooks: db.opts.InboxHooks}
}

// Devices returns the device registry store.
func (db *DB) Devices() devicelists.Store {
	return devicelists.NewStore(newDeviceStore(db), db.opts.DeviceListHooks)
}

// Federation returns the federation store.
func (db *DB) Federation() federation.Store { return federation.NewStore(db.FederationDB()) }

// inTx runs fn in a transaction, retrying a few times when PostgreSQL aborts
// it for a deadlock or a serialization failure (both safe to retry, since
// the transaction had no effect).
func (db *DB) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	const attempts = 4
	var err error
	for i := range attempts {
		err = pgx.BeginFunc(ctx, db.pool, fn)
		if err == nil || !retryable(err) || i == attempts-1 {
			return err
		}
		db.log.WarnContext(ctx, "retrying transaction", "err", err, "attempt", i+1)
		select {
		case <-time.After(time.Duration(rand.N(10*(i+1))+1) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001")
}

// wakeLocal wakes this replica's waiters at once after a commit; the NOTIFY
// reaches the other replicas (and this one again, harmlessly).
func (db *DB) wakeLocal(keys []wakeup.Key) {
	if db.hub != nil && len(keys) > 0 {
		db.hub.Wake(keys...)
	}
}
