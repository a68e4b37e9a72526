// Package sqlite is todeviced's embedded SQLite backend (modernc.org/sqlite,
// pure Go, no cgo): the default, so todeviced runs with no database server.
// It implements the same store interfaces as the PostgreSQL backend, with
// the same behaviour, checked by the same conformance suite.
//
// One process serves a database file (Options.Exclusive, a kernel lock on
// PATH.lock). Inside it, every write is a BEGIN IMMEDIATE transaction on one
// writer connection, taken in turn under a Go lock: writers queue in Go, in
// arrival order, instead of spinning on SQLITE_BUSY, and positions commit in
// the order they are issued (invariant 3). Reads run in parallel on a pool of
// query-only connections; the write-ahead log lets them read while a write
// is in progress. Wake-ups are delivered in-process after each commit.
//
// `todeviced migrate` and `todeviced device add` open the file beside the
// server without the serve lock; SQLite's file locks and the busy timeout
// serialize their writes with the server's, and the server sees them on its
// next read.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	// The pure-Go SQLite driver, registered as "sqlite".
	_ "modernc.org/sqlite"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Defaults of Options.
const (
	// DefaultBusyTimeout is how long a statement waits for a lock another
	// process holds (a `device add` beside the server, a checkpoint) before
	// it fails with SQLITE_BUSY. Writers of this process never wait on it:
	// they queue for the writer connection in Go.
	DefaultBusyTimeout = 5 * time.Second
	// minReaders is the smallest read pool; the default is GOMAXPROCS.
	minReaders = 4
	// journalSizeLimit truncates the write-ahead log back to 64 MiB after a
	// checkpoint, so one burst does not leave a huge -wal file behind.
	journalSizeLimit = 64 << 20
)

// Options configure Open.
type Options struct {
	// Path is the database file.
	Path string
	// Migrate creates the file if needed and applies pending migrations.
	// Without it the file must exist and hold the schema.
	Migrate bool
	// Exclusive marks the serving process: Open takes the database's server
	// lock and fails with ErrInUse if another process holds it. Wake-ups
	// are in-process, so a second server on the file would never wake the
	// first one's long-polls. Tools that only write a little beside the
	// server (migrate, device add) leave it false.
	Exclusive bool
	// MaxReaders caps the pool of read connections (0: GOMAXPROCS, at
	// least 4).
	MaxReaders int
	// BusyTimeout overrides DefaultBusyTimeout.
	BusyTimeout time.Duration
	// Hub is woken after commits; nil for tools that serve no long-polls.
	Hub    *wakeup.Hub
	Logger *slog.Logger
	// InboxHooks are test hooks for the inbox store.
	InboxHooks inbox.Hooks
	// DeviceListHooks are test hooks for the device-list store.
	DeviceListHooks devicelists.Hooks
}

// DB is an open SQLite backend.
type DB struct {
	opts    Options
	path    string
	log     *slog.Logger
	hub     *wakeup.Hub
	epoch   string
	writer  *sql.DB // one connection: every write goes through it
	readers *sql.DB // query-only connections, used in parallel

	// writes carries write requests to the committer goroutine, which owns
	// the writer connection. Unbuffered: a request is handed over only when
	// the committer takes it into a group.
	writes chan *writeRequest
	// waiting counts writers not yet taken into a group; the committer counts
	// a request out when it takes it, before running anything.
	waiting atomic.Int64
	// closing stops the committer; committerDone is closed when it stopped.
	closing       chan struct{}
	committerDone chan struct{}
	committing    bool // the committer was started
	// sendGroups counts committed groups of two or more sends, and
	// groupedSends the sends in them.
	sendGroups, groupedSends atomic.Int64

	serveLock *lockFile
	closeOnce sync.Once
}

// ParseURL returns the file a sqlite:PATH database URL names.
func ParseURL(u string) (string, error) {
	p, ok := strings.CutPrefix(u, "sqlite:")
	switch {
	case !ok:
		return "", fmt.Errorf("%q is not a sqlite: URL", u)
	case p == "":
		return "", errors.New("sqlite: names no file; want sqlite:PATH, e.g. sqlite:todeviced.db")
	case strings.HasPrefix(p, "//"):
		return "", fmt.Errorf("want sqlite:PATH, e.g. sqlite:todeviced.db or sqlite:/var/lib/todeviced/todeviced.db, not %q", u)
	case p == ":memory:" || strings.HasPrefix(p, "file:"):
		return "", errors.New("want sqlite:PATH naming a file: in-memory databases and URI filenames are not supported, the server's connections must share one file")
	}
	return p, nil
}

// Open opens the database file, migrating it when asked, and loads the
// epoch. Close it when done.
func Open(ctx context.Context, opts Options) (*DB, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = DefaultBusyTimeout
	}
	if opts.MaxReaders <= 0 {
		opts.MaxReaders = max(minReaders, runtime.GOMAXPROCS(0))
	}
	path := resolve(opts.Path)
	if !opts.Migrate {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no SQLite database at %s: run `todeviced migrate` or start with --migrate", path)
		}
	}
	db := &DB{opts: opts, path: path, log: opts.Logger, hub: opts.Hub,
		writes: make(chan *writeRequest), closing: make(chan struct{}), committerDone: make(chan struct{})}
	opened := false
	defer func() {
		if !opened {
			db.Close()
		}
	}()
	if opts.Exclusive {
		// Before migrating: a second server must be refused before it
		// touches anything.
		l, err := lockServer(path)
		if err != nil {
			return nil, err
		}
		db.serveLock = l
	}
	var err error
	if db.writer, err = openWriter(ctx, path, opts.BusyTimeout); err != nil {
		return nil, err
	}
	if opts.Migrate {
		if _, err := migrate(ctx, db.writer, path, db.log); err != nil {
			return nil, err
		}
	}
	db.readers, err = sql.Open("sqlite", dsn(path, readerParams(opts.BusyTimeout)))
	if err != nil {
		return nil, fmt.Errorf("opening SQLite readers on %s: %w", path, err)
	}
	// Keep every reader open: a new connection re-runs its pragmas and
	// re-reads the schema, which is not free.
	db.readers.SetMaxOpenConns(opts.MaxReaders)
	db.readers.SetMaxIdleConns(opts.MaxReaders)
	if err := db.loadEpoch(ctx); err != nil {
		return nil, err
	}
	db.committing = true
	go db.committer()
	opened = true
	return db, nil
}

// resolve follows symbolic links the way SQLite does when it names the -wal
// and -shm files, so the lock files sit beside the real database too.
func resolve(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	return path
}

// openWriter opens the single writer connection. Connecting at once makes a
// path that cannot be opened fail at start-up, and switches the file to WAL
// before any reader connects.
func openWriter(ctx context.Context, path string, busy time.Duration) (*sql.DB, error) {
	w, err := sql.Open("sqlite", dsn(path, writerParams(busy)))
	if err != nil {
		return nil, fmt.Errorf("opening SQLite database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("opening SQLite database %s: %w", path, err)
	}
	return w, nil
}

// dsn builds a modernc.org/sqlite data source name. The file: URI form
// passes the path through unchanged once '%', '?' and '#' are escaped (the
// plain form would cut a path at its first '?'); SQLite ignores the
// driver's underscore parameters, the driver applies them to every new
// connection.
func dsn(path string, params url.Values) string {
	p := filepath.ToSlash(path)
	if filepath.VolumeName(path) != "" {
		p = "/" + p // file:/C:/dir/todeviced.db
	}
	p = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(p)
	return "file:" + p + "?" + params.Encode()
}

// writerParams are the writer connection's settings:
//   - WAL: readers never block the writer nor the writer the readers;
//   - synchronous=FULL: the log is synced at every commit, so a 200 means
//     the data is on disk (invariant 11) — NORMAL, the usual WAL choice,
//     may lose the last commits on power loss;
//   - BEGIN IMMEDIATE: a transaction takes the write lock when it begins,
//     so it never fails half-way with a lock upgrade it cannot get;
//   - foreign_keys: SQLite leaves them off unless asked, per connection;
//   - a 64 MiB page cache: with SQLite's default of 2 MiB a fan-out to
//     hundreds of devices spills dirty index pages into the log before the
//     commit and writes them again at the commit.
func writerParams(busy time.Duration) url.Values {
	v := url.Values{}
	v.Set("_busy_timeout", strconv.FormatInt(busy.Milliseconds(), 10))
	v.Set("_journal_mode", "WAL")
	v.Set("_synchronous", "FULL")
	v.Set("_foreign_keys", "on")
	v.Set("_txlock", "immediate")
	v.Add("_pragma", "journal_size_limit("+strconv.Itoa(journalSizeLimit)+")")
	v.Add("_pragma", "cache_size(-65536)")
	return v
}

// readerParams are a read connection's settings: query_only makes a write
// that strays onto a reader an error instead of a second writer. The busy
// timeout covers the short moments a WAL reader can be refused (recovery
// after a crash, the log being restarted).
func readerParams(busy time.Duration) url.Values {
	v := url.Values{}
	v.Set("_busy_timeout", strconv.FormatInt(busy.Milliseconds(), 10))
	v.Set("_foreign_keys", "on")
	v.Set("_query_only", "1")
	return v
}

func (db *DB) loadEpoch(ctx context.Context) error {
	var n int
	if err := db.readers.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'`).Scan(&n); err != nil {
		return fmt.Errorf("reading the schema of %s: %w", db.path, err)
	}
	if n == 0 {
		return fmt.Errorf("the database %s has no todeviced schema: run `todeviced migrate` or start with --migrate", db.path)
	}
	if err := db.readers.QueryRowContext(ctx, `SELECT epoch FROM meta`).Scan(&db.epoch); err != nil {
		return fmt.Errorf("reading database epoch: %w", err)
	}
	return nil
}

// Start does nothing: wake-ups are delivered in-process at each commit, so
// there is no listener to start and nothing that can fail.
func (db *DB) Start(context.Context) {}

// Close closes the connections and releases the server lock. It is
// idempotent.
func (db *DB) Close() {
	db.closeOnce.Do(func() {
		close(db.closing)
		if db.committing {
			<-db.committerDone // the group in progress commits first
		}
		if db.readers != nil {
			if err := db.readers.Close(); err != nil {
				db.log.Warn("closing SQLite readers", "err", err)
			}
		}
		// Last: closing the last connection checkpoints the log into the
		// database file and removes it.
		if db.writer != nil {
			if err := db.writer.Close(); err != nil {
				db.log.Warn("closing SQLite writer", "err", err)
			}
		}
		// Only once the file is closed may another server take it over.
		if db.serveLock != nil {
			if err := db.serveLock.unlock(); err != nil {
				db.log.Warn("releasing the SQLite server lock", "err", err)
			}
		}
	})
}

// Path is the database file.
func (db *DB) Path() string { return db.path }

// Epoch is the database epoch.
func (db *DB) Epoch() string { return db.epoch }

// Ping checks that the database answers a read.
func (db *DB) Ping(ctx context.Context) error {
	var one int
	if err := db.readers.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("pinging SQLite: %w", err)
	}
	return nil
}

// Inbox returns the inbox store.
func (db *DB) Inbox() inbox.Store {
	return &inboxStore{Upkeep: inbox.NewUpkeep(inboxDB{db}), db: db, hooks: db.opts.InboxHooks}
}

// Devices returns the device registry store.
func (db *DB) Devices() devicelists.Store {
	return devicelists.NewStore(newDeviceStore(db), db.opts.DeviceListHooks)
}

// WaitingWriters reports how many writers are queued for the writer
// connection (tests use it to see a writer blocked behind another).
func (db *DB) WaitingWriters() int { return int(db.waiting.Load()) }

// Pragma reads a pragma on the writer connection (tests check durability
// settings with it).
func (db *DB) Pragma(ctx context.Context, name string) (string, error) {
	for _, c := range name {
		if (c < 'a' || c > 'z') && c != '_' {
			return "", fmt.Errorf("bad pragma name %q", name)
		}
	}
	var v string
	err := db.write(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "PRAGMA "+name).Scan(&v)
	})
	return v, err
}

// maxGroup bounds how many write requests share one commit.
const maxGroup = 64

// writeRequest is one write transaction's work, handed to the committer.
type writeRequest struct {
	ctx  context.Context
	send bool // a sendToDevice, counted by SendGroups
	fn   func(tx *sql.Tx) error
	err  error
	done chan struct{}
}

var errClosed = errors.New("the SQLite database is closed")

// write runs fn in a BEGIN IMMEDIATE transaction on the writer connection and
// returns once that transaction is committed (on disk: synchronous=FULL).
//
// Writers take turns: fn runs only on the committer goroutine, one request
// after another, so positions are issued and committed in the same order and
// no reader sees a lower position commit after a higher one. Requests that
// queue up while a transaction runs share the next commit (group commit):
// each runs inside a savepoint of its own, so a request that fails rolls
// back only its own writes, and one fsync makes the whole group durable.
// Under load that multiplies what a single writer can do, since the fsync
// is most of the cost of a small transaction.
func (db *DB) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return db.enqueue(&writeRequest{ctx: ctx, fn: fn, done: make(chan struct{})})
}

// writeSend is write for a sendToDevice, which SendGroups counts.
func (db *DB) writeSend(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return db.enqueue(&writeRequest{ctx: ctx, send: true, fn: fn, done: make(chan struct{})})
}

// SendGroups reports how many committed groups held two or more sends,
// and how many sends committed in them.
func (db *DB) SendGroups() (groups, sends int64) {
	return db.sendGroups.Load(), db.groupedSends.Load()
}

func (db *DB) enqueue(req *writeRequest) error {
	ctx := req.ctx
	db.waiting.Add(1)
	select {
	case db.writes <- req:
		// The committer took it and counted it out.
	case <-ctx.Done():
		db.waiting.Add(-1)
		return fmt.Errorf("waiting for the writer connection: %w", ctx.Err())
	case <-db.closing:
		db.waiting.Add(-1)
		return errClosed
	}
	<-req.done
	return req.err
}

// committer owns the writer connection: it takes the first waiting request,
// adds every other one already waiting (up to maxGroup), and runs them in
// one transaction.
func (db *DB) committer() {
	defer close(db.committerDone)
	for {
		var group []*writeRequest
		select {
		case req := <-db.writes:
			db.waiting.Add(-1)
			group = append(group, req)
		case <-db.closing:
			return
		}
	more:
		for len(group) < maxGroup {
			select {
			case req := <-db.writes:
				db.waiting.Add(-1)
				group = append(group, req)
			default:
				break more
			}
		}
		db.commitGroup(group)
		for _, req := range group {
			close(req.done)
		}
	}
}

func (db *DB) commitGroup(group []*writeRequest) {
	fail := func(err error) {
		for _, req := range group {
			if req.err == nil {
				req.err = err
			}
		}
	}
	// The transaction belongs to the whole group: one request whose
	// context ends must not abort the others' work, but when every request
	// has given up (say, while BEGIN IMMEDIATE waits for another process's
	// lock) the transaction ends too.
	txCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for _, req := range group {
			select {
			case <-req.ctx.Done():
			case <-stop:
				return
			}
		}
		cancel()
	}()
	tx, err := db.writer.BeginTx(txCtx, nil)
	if err != nil {
		fail(fmt.Errorf("beginning write transaction: %w", err))
		return
	}
	ok := 0
	for _, req := range group {
		if err := req.ctx.Err(); err != nil {
			req.err = err
			continue
		}
		if len(group) == 1 {
			req.err = req.fn(tx)
		} else {
			req.err = runSavepoint(tx, req)
		}
		if req.err == nil {
			ok++
		}
	}
	if ok == 0 {
		_ = tx.Rollback()
		return
	}
	if err := tx.Commit(); err != nil {
		fail(fmt.Errorf("committing: %w", err))
		return
	}
	sends := 0
	for _, req := range group {
		if req.send && req.err == nil {
			sends++
		}
	}
	if sends > 1 {
		db.sendGroups.Add(1)
		db.groupedSends.Add(int64(sends))
	}
}

// runSavepoint runs one request of a group inside a savepoint, rolling back
// to it if the request fails.
func runSavepoint(tx *sql.Tx, req *writeRequest) error {
	ctx := context.Background()
	if _, err := tx.ExecContext(ctx, "SAVEPOINT request"); err != nil {
		return fmt.Errorf("starting savepoint: %w", err)
	}
	if err := req.fn(tx); err != nil {
		if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO request"); rerr != nil {
			return errors.Join(err, fmt.Errorf("rolling back savepoint: %w", rerr))
		}
		if _, rerr := tx.ExecContext(ctx, "RELEASE request"); rerr != nil {
			return errors.Join(err, fmt.Errorf("releasing savepoint: %w", rerr))
		}
		return err
	}
	if _, err := tx.ExecContext(ctx, "RELEASE request"); err != nil {
		return fmt.Errorf("releasing savepoint: %w", err)
	}
	return nil
}

// read runs fn in a read transaction on a reader connection: one snapshot
// for all of fn's statements.
func (db *DB) read(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.readers.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("beginning read transaction: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// wake wakes this process's waiters after a commit. Only this process serves
// the file, so no other process has waiters to tell.
func (db *DB) wake(keys []wakeup.Key) {
	if db.hub != nil && len(keys) > 0 {
		db.hub.Wake(keys...)
	}
}

// micros is how times are stored: INTEGER microseconds since the Unix epoch.
func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us) }

// ReaderStats are the read pool's statistics (writers queue for the one
// writer connection instead; WaitingWriters counts them).
func (db *DB) ReaderStats() sql.DBStats { return db.readers.Stats() }
