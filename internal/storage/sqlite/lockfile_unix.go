//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package sqlite

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockNonBlocking takes an exclusive flock on f. flock (not fcntl) locks
// belong to the open file description, so two opens in one process exclude
// each other (fcntl locks would not), and they never interfere with the
// fcntl locks SQLite takes on the database file itself.
func lockNonBlocking(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return errLockHeld
		}
		return fmt.Errorf("locking %s: %w", f.Name(), err)
	}
}
