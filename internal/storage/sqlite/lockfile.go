package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Lock files beside the database. They are never deleted: removing a lock
// file another process holds would let a third process lock a new file of
// the same name, and an empty file left behind costs nothing.
const (
	// serveLockSuffix names the lock the serving process holds for its
	// whole life (see Options.Exclusive).
	serveLockSuffix = ".lock"
	// migrateLockSuffix names the lock held while migrations are applied,
	// so that a server starting and a `todeviced migrate` or `device add`
	// beside it apply each migration once.
	migrateLockSuffix = ".migrate.lock"
	// lockPoll is how often a waiter retries a held lock: kernel locks
	// cannot be waited for with a context, so waiting polls.
	lockPoll = 25 * time.Millisecond
)

// ErrInUse is returned by Open with Options.Exclusive when another process
// serves the database.
var ErrInUse = errors.New("the database is in use by another todeviced server")

// errLockHeld is what lockFile reports when another descriptor holds the lock.
var errLockHeld = errors.New("lock held by another process")

// lockFile is an exclusive advisory lock on a file, held through an open
// descriptor (flock on Unix, LockFileEx on Windows). The kernel releases it
// when the descriptor is closed, also when the process dies, so a crash
// never leaves a stale lock that an operator would have to remove by hand
// (unlike a pid file or a lock row in the database).
type lockFile struct{ f *os.File }

// tryLockFile opens (creating) path and takes its lock without waiting. It
// returns errLockHeld when the lock is held elsewhere. Locks are per open
// file, not per process: a second open in the same process is refused too.
func tryLockFile(path string) (*lockFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := lockNonBlocking(f); err != nil {
		f.Close()
		return nil, err
	}
	return &lockFile{f: f}, nil
}

// waitLockFile takes the lock on path, waiting until it is free or ctx ends.
func waitLockFile(ctx context.Context, path string) (*lockFile, error) {
	t := time.NewTicker(lockPoll)
	defer t.Stop()
	for {
		l, err := tryLockFile(path)
		if !errors.Is(err, errLockHeld) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for lock file %s: %w", path, ctx.Err())
		case <-t.C:
		}
	}
}

// unlock releases the lock by closing the descriptor.
func (l *lockFile) unlock() error { return l.f.Close() }

// lockServer takes the serving process's lock for the database at path and
// writes this process's id into it, for the message a second server gets.
func lockServer(path string) (*lockFile, error) {
	lp := path + serveLockSuffix
	l, err := tryLockFile(lp)
	if errors.Is(err, errLockHeld) {
		holder := ""
		if b, rerr := os.ReadFile(lp); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		return nil, fmt.Errorf("%w%s: %s is served by one process at a time (its lock is %s); stop the other server, or use PostgreSQL to run several replicas. `todeviced migrate` and `todeviced device add` work beside a running server",
			ErrInUse, holder, path, lp)
	}
	if err != nil {
		return nil, fmt.Errorf("taking the server lock %s: %w", lp, err)
	}
	// The pid is only for that message; the kernel lock is what counts.
	if err := l.f.Truncate(0); err == nil {
		_, _ = l.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return l, nil
}
