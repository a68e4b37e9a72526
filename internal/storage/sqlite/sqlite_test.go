package sqlite_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/storage/sqlite"
	"github.com/todeviced/todeviced/internal/storage/storetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(holdServerLock(os.Getenv(helperEnv)))
	}
	goleak.VerifyTestMain(m)
}

// newURL returns a database URL in a directory of its own, removed after t.
func newURL(t *testing.T) string {
	return "sqlite:" + filepath.Join(t.TempDir(), "todeviced.db")
}

func pathOf(t *testing.T, url string) string {
	t.Helper()
	p, err := sqlite.ParseURL(url)
	require.NoError(t, err)
	return p
}

func sqliteOf(t *testing.T, b storage.Backend) *sqlite.DB {
	t.Helper()
	type unwrapper interface{ SQLite() *sqlite.DB }
	u, ok := b.(unwrapper)
	require.True(t, ok, "backend %T is not SQLite", b)
	return u.SQLite()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// Harness runs the conformance suite against SQLite: a fresh file per test.
var Harness = storetest.Harness{
	NewURL: newURL,
	Recreate: func(t *testing.T, url string) {
		path := pathOf(t, url)
		for _, suffix := range []string{"", "-wal", "-shm", "-journal", ".lock", ".migrate.lock"} {
			if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				require.NoError(t, err)
			}
		}
		left, err := filepath.Glob(path + "*")
		require.NoError(t, err)
		require.Empty(t, left, "recreating must leave no file of the old database")
	},
	// One process serves a file: wake-ups are in-process.
	MultiInstance: false,
	WaitingWriters: func(t *testing.T, b storage.Backend) int {
		return sqliteOf(t, b).WaitingWriters()
	},
	Durable: func(t *testing.T, b storage.Backend) {
		db := sqliteOf(t, b)
		sync, err := db.Pragma(ctx(t), "synchronous")
		require.NoError(t, err)
		require.Equal(t, "2", sync, "synchronous must be FULL (2): a 200 means the data is on disk")
		mode, err := db.Pragma(ctx(t), "journal_mode")
		require.NoError(t, err)
		require.Equal(t, "wal", mode, "the writer must use the write-ahead log")
	},
}

func TestConformance(t *testing.T) {
	storetest.Run(t, Harness)
}

func open(t *testing.T, opts sqlite.Options) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(ctx(t), opts)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

func TestParseURL(t *testing.T) {
	for url, want := range map[string]string{
		"sqlite:todeviced.db":                     "todeviced.db",
		"sqlite:/var/lib/todeviced/todeviced.db":  "/var/lib/todeviced/todeviced.db",
		"sqlite:./data/what?ever#it%20is.db":      "./data/what?ever#it%20is.db",
		"sqlite:relative/dir/todeviced.sqlite3":   "relative/dir/todeviced.sqlite3",
		"sqlite:C:\\ProgramData\\todeviced\\t.db": "C:\\ProgramData\\todeviced\\t.db",
	} {
		got, err := sqlite.ParseURL(url)
		require.NoError(t, err, url)
		require.Equal(t, want, got, url)
	}
	for _, url := range []string{"sqlite:", "sqlite::memory:", "sqlite://host/x.db", "sqlite:file:x.db?mode=memory", "postgres://x"} {
		_, err := sqlite.ParseURL(url)
		require.Error(t, err, url)
		_, err = storage.Kind(url)
		if strings.HasPrefix(url, "sqlite:") {
			require.ErrorContains(t, err, "--database-url", "a bad sqlite: URL is refused at configuration time, naming the setting")
		}
	}
}

// TestPathIsTakenLiterally: characters that mean something in a URI are
// part of the file name, and every file lands beside the database.
func TestPathIsTakenLiterally(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a?b#c%20d")
	require.NoError(t, os.Mkdir(dir, 0o755))
	path := filepath.Join(dir, "to?device#d.db")
	db := open(t, sqlite.Options{Path: path, Migrate: true, Exclusive: true})
	_, _, err := db.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: "@a:x", DeviceID: "A"})
	require.NoError(t, err)
	_, err = os.Stat(path)
	require.NoError(t, err, "the database is the file the URL names")
	_, err = os.Stat(path + "-wal")
	require.NoError(t, err, "the write-ahead log is beside it")
	_, err = os.Stat(path + ".lock")
	require.NoError(t, err, "the server lock is beside it")
	entries, err := os.ReadDir(filepath.Dir(dir))
	require.NoError(t, err)
	require.Len(t, entries, 1, "nothing is created outside the database's directory")
}

func TestOpenWithoutMigrateNeedsSchema(t *testing.T) {
	path := pathOf(t, newURL(t))
	_, err := sqlite.Open(ctx(t), sqlite.Options{Path: path})
	require.ErrorContains(t, err, "todeviced migrate")
	_, err = os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist, "opening without --migrate must not create the file")

	st, err := sqlite.Status(ctx(t), path)
	require.NoError(t, err)
	require.NotEmpty(t, st)
	for _, s := range st {
		require.False(t, s.Applied)
	}
	_, err = os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist, "status must not create the file")

	n, err := sqlite.Migrate(ctx(t), path, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Equal(t, len(st), n)
	st, err = sqlite.Status(ctx(t), path)
	require.NoError(t, err)
	for _, s := range st {
		require.True(t, s.Applied, "%s", s.Name)
	}
	db := open(t, sqlite.Options{Path: path})
	pending, err := db.Pending(ctx(t))
	require.NoError(t, err)
	require.Zero(t, pending)
	require.Len(t, db.Epoch(), 16)
}

// TestConcurrentMigrationsApplyOnce: servers starting and tools running
// beside them may migrate the same new file at once; each migration must
// be applied once, and the database must get one epoch.
func TestConcurrentMigrationsApplyOnce(t *testing.T) {
	path := pathOf(t, newURL(t))
	const n = 6
	var wg sync.WaitGroup
	applied := make([]int, n)
	epochs := make([]string, n)
	for i := range n {
		wg.Go(func() {
			if i%2 == 0 {
				var err error
				applied[i], err = sqlite.Migrate(ctx(t), path, slog.New(slog.DiscardHandler))
				assertNoError(t, err)
				return
			}
			db, err := sqlite.Open(ctx(t), sqlite.Options{Path: path, Migrate: true})
			if !assertNoError(t, err) {
				return
			}
			epochs[i] = db.Epoch()
			db.Close()
		})
	}
	wg.Wait()
	total := 0
	for _, a := range applied {
		total += a
	}
	st, err := sqlite.Status(ctx(t), path)
	require.NoError(t, err)
	db := open(t, sqlite.Options{Path: path})
	for i, e := range epochs {
		if e != "" {
			require.Equal(t, db.Epoch(), e, "opener %d saw another epoch", i)
		}
	}
	require.LessOrEqual(t, total, len(st), "a migration was applied twice")
	pending, err := db.Pending(ctx(t))
	require.NoError(t, err)
	require.Zero(t, pending)
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("unexpected error: %v", err)
		return false
	}
	return true
}

// TestSecondServerRefused: one server per file; the tools work beside it
// and the server sees what they write.
func TestSecondServerRefused(t *testing.T) {
	url := newURL(t)
	path := pathOf(t, url)
	opts := storage.Options{URL: url, Migrate: true}
	serveOpts := opts
	serveOpts.Exclusive = true

	server, err := storage.Open(ctx(t), serveOpts)
	require.NoError(t, err)
	defer server.Close()

	_, err = storage.Open(ctx(t), serveOpts)
	require.ErrorIs(t, err, sqlite.ErrInUse)
	require.ErrorContains(t, err, fmt.Sprintf("pid %d", os.Getpid()), "the message names the holder")
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, "todeviced device add", "the message says what still works beside the server")

	// `todeviced migrate` beside the server.
	n, err := storage.Migrate(ctx(t), url, "", slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Zero(t, n)

	// `todeviced device add` beside the server: the server authenticates
	// the new token on its next request.
	tool, err := storage.Open(ctx(t), opts)
	require.NoError(t, err)
	hash := devicelists.HashToken("tdv_beside")
	_, _, err = tool.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: "B1", TokenHash: hash})
	require.NoError(t, err)
	tool.Close()
	d, err := server.Devices().DeviceByToken(ctx(t), hash)
	require.NoError(t, err)
	require.Equal(t, "B1", d.DeviceID)

	server.Close()
	again, err := storage.Open(ctx(t), serveOpts)
	require.NoError(t, err, "closing the server releases the file")
	again.Close()
}

// helperEnv makes the test binary a server holding a database's lock (see
// TestKilledServerLeavesNoLock).
const helperEnv = "TODEVICED_SQLITE_TEST_HOLD"

func holdServerLock(path string) int {
	db, err := sqlite.Open(context.Background(), sqlite.Options{Path: path, Migrate: true, Exclusive: true})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer db.Close()
	fmt.Println("serving")
	time.Sleep(time.Hour) // until killed
	return 0
}

// TestKilledServerLeavesNoLock: a server that dies without closing leaves
// no stale lock behind; the kernel releases it with the process.
func TestKilledServerLeavesNoLock(t *testing.T) {
	path := pathOf(t, newURL(t))
	cmd := exec.CommandContext(ctx(t), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "serving\n", line)

	_, err = sqlite.Open(ctx(t), sqlite.Options{Path: path, Migrate: true, Exclusive: true})
	require.ErrorIs(t, err, sqlite.ErrInUse)
	require.ErrorContains(t, err, fmt.Sprintf("pid %d", cmd.Process.Pid))

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	db := open(t, sqlite.Options{Path: path, Migrate: true, Exclusive: true})
	require.NotEmpty(t, db.Epoch(), "a killed server's lock is gone with it")
}

// holdWrite starts an Accept on db that stops inside its transaction (the
// write lock held) until the returned release is called; done is closed
// when that Accept has returned.
func holdWrite(t *testing.T, path string) (db *sqlite.DB, release func(), done <-chan struct{}) {
	t.Helper()
	entered, rel := make(chan struct{}), make(chan struct{})
	var once sync.Once
	db = open(t, sqlite.Options{Path: path, Migrate: true, InboxHooks: inbox.Hooks{
		BeforeAcceptCommit: func(context.Context, *inbox.Accept) error {
			once.Do(func() { close(entered) })
			<-rel
			return nil
		},
	}})
	fin := make(chan struct{})
	go func() {
		defer close(fin)
		a, err := inbox.BuildAccept("example.org", inbox.TxnKey{UserID: "@a:example.org", DeviceID: "A", EventType: "m.test", TxnID: "hold"},
			inbox.Messages{"@x:remote.test": {"X": []byte(`{}`)}})
		if assertNoError(t, err) {
			_, err = db.Inbox().Accept(context.Background(), a)
			assertNoError(t, err)
		}
	}()
	<-entered
	var relOnce sync.Once
	release = func() { relOnce.Do(func() { close(rel) }) }
	t.Cleanup(func() { release(); <-fin })
	return db, release, fin
}

// TestWriterBesideAnotherProcessWaits: a tool's write while the server
// holds the write lock waits for it (busy timeout) and then succeeds.
func TestWriterBesideAnotherProcessWaits(t *testing.T) {
	path := pathOf(t, newURL(t))
	_, release, serverDone := holdWrite(t, path)

	tool := open(t, sqlite.Options{Path: path})
	toolDone := make(chan error, 1)
	go func() {
		_, _, err := tool.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: "@b:example.org", DeviceID: "B"})
		toolDone <- err
	}()
	// Give the tool time to reach the lock; whenever it gets there, it must
	// not finish before the server's transaction does.
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-toolDone:
		t.Fatalf("the tool wrote while the server held the write lock (err %v)", err)
	default:
	}
	release()
	<-serverDone
	require.NoError(t, <-toolDone, "the waiting write goes through once the lock is free")
	_, err := tool.Devices().Device(ctx(t), "@b:example.org", "B")
	require.NoError(t, err)
}

// TestBusyTimeoutAndCancelEndTheWait: a write that cannot get the lock fails
// once the busy timeout is over or its context ends, instead of hanging.
func TestBusyTimeoutAndCancelEndTheWait(t *testing.T) {
	path := pathOf(t, newURL(t))
	holdWrite(t, path)

	impatient := open(t, sqlite.Options{Path: path, BusyTimeout: 20 * time.Millisecond})
	_, _, err := impatient.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: "@b:example.org", DeviceID: "B"})
	require.ErrorContains(t, err, "database is locked", "a timed-out wait reports SQLITE_BUSY")

	patient := open(t, sqlite.Options{Path: path, BusyTimeout: time.Hour})
	c, cancel := context.WithCancel(ctx(t))
	errc := make(chan error, 1)
	go func() {
		_, _, err := patient.Devices().PutDevice(c, devicelists.PutDevice{UserID: "@b:example.org", DeviceID: "B"})
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	require.Error(t, <-errc, "a cancelled wait ends with an error")
}

// TestReadsDoNotWaitForWriters: every read of the stores runs on a reader
// connection, so an open write transaction delays none of them.
func TestReadsDoNotWaitForWriters(t *testing.T) {
	path := pathOf(t, newURL(t))
	setup := open(t, sqlite.Options{Path: path, Migrate: true})
	hash := devicelists.HashToken("tok")
	d, _, err := setup.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: "@b:example.org", DeviceID: "B", TokenHash: hash})
	require.NoError(t, err)
	setup.Close()

	db, _, _ := holdWrite(t, path)
	c := ctx(t)
	_, err = db.Devices().DeviceByToken(c, hash)
	require.NoError(t, err)
	_, err = db.Devices().Device(c, "@b:example.org", "B")
	require.NoError(t, err)
	_, err = db.Devices().UserDevices(c, "@b:example.org")
	require.NoError(t, err)
	_, err = db.Devices().Tombstones(c, 10)
	require.NoError(t, err)
	_, err = db.Inbox().Sync(c, inbox.SyncQuery{Device: inbox.Recipient{UserID: d.UserID, NID: d.NID}, Limit: 100})
	require.NoError(t, err)
	_, err = db.Inbox().Backlog(c)
	require.NoError(t, err)
	q, err := db.Inbox().PeekOutbox(c, "remote.test", 10)
	require.NoError(t, err)
	require.Empty(t, q, "readers do not see the uncommitted write")
	require.NoError(t, db.Ping(c))
	_, err = db.Pending(c)
	require.NoError(t, err)
	require.Zero(t, db.WaitingWriters())
}
