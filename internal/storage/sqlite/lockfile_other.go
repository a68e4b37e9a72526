//go:build !(darwin || dragonfly || freebsd || linux || netbsd || openbsd || windows)

package sqlite

import "os"

// lockNonBlocking cannot lock on this platform: the one-server check and the
// migration lock are skipped. Two servers on one file would still store
// correctly (SQLite serializes their writes), but neither would wake the
// other's long-polls.
func lockNonBlocking(*os.File) error { return nil }
