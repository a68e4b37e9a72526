package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"

	"github.com/pressly/goose/v3"

	schema "github.com/todeviced/todeviced/sql"
)

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

// migrations returns the embedded SQLite migrations.
func migrations() (fs.FS, error) {
	return fs.Sub(schema.SQLite, "sqlite")
}

// migrate applies pending migrations on the writer connection and returns
// how many it applied. goose runs each in a BEGIN IMMEDIATE transaction (the
// writer's connection string says so), under the migration lock file, so a
// server starting and a `todeviced migrate` or `device add` beside it apply
// each migration once.
func migrate(ctx context.Context, writer *sql.DB, path string, log *slog.Logger) (int, error) {
	// Nothing pending, the common case: no need to take the lock. Another
	// process can only apply more, never fewer.
	n, err := pending(ctx, writer)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	// The lock file, not goose's session locker: goose checks for pending
	// migrations, creating its version table, before it takes a session
	// lock, and processes racing there wait out goose's one-second retry.
	// A lock in the database could not do this job either: goose runs each
	// migration in a transaction of its own, and a lock row would outlive a
	// crash.
	l, err := waitLockFile(ctx, path+migrateLockSuffix)
	if err != nil {
		return 0, fmt.Errorf("taking the migration lock: %w", err)
	}
	defer func() {
		if err := l.unlock(); err != nil {
			log.WarnContext(ctx, "releasing the migration lock", "err", err)
		}
	}()
	fsys, err := migrations()
	if err != nil {
		return 0, err
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, writer, fsys)
	if err != nil {
		return 0, fmt.Errorf("loading migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return 0, fmt.Errorf("applying migrations to %s: %w", path, err)
	}
	for _, r := range results {
		log.InfoContext(ctx, "applied migration", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration.String())
	}
	return len(results), nil
}

// Migrate applies pending migrations to the database file at path, creating
// it if needed, and returns how many it applied. It is safe beside a
// running server and beside other Migrate calls.
func Migrate(ctx context.Context, path string, log *slog.Logger) (int, error) {
	path = resolve(path)
	w, err := openWriter(ctx, path, DefaultBusyTimeout)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	return migrate(ctx, w, path, log)
}

// Status lists every known migration and whether it is applied. A missing
// file is reported as nothing applied, and not created.
func Status(ctx context.Context, path string) ([]MigrationStatus, error) {
	path = resolve(path)
	applied := map[int64]bool{}
	if _, err := os.Stat(path); err == nil {
		w, err := openWriter(ctx, path, DefaultBusyTimeout)
		if err != nil {
			return nil, err
		}
		defer w.Close()
		if applied, err = appliedVersions(ctx, w); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading migration status: %w", err)
	}
	fsys, err := migrations()
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make([]MigrationStatus, 0, len(names))
	for _, name := range names {
		v, err := goose.NumericComponent(name)
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", name, err)
		}
		out = append(out, MigrationStatus{Version: v, Name: name, Applied: applied[v]})
	}
	return out, nil
}

// appliedVersions reads goose's record of applied versions, without creating
// goose's table when it is missing (status must not write). As goose does,
// the newest record of a version decides.
func appliedVersions(ctx context.Context, q *sql.DB) (map[int64]bool, error) {
	out := map[int64]bool{}
	ok, err := hasVersionTable(ctx, q)
	if err != nil || !ok {
		return out, err
	}
	rows, err := q.QueryContext(ctx, `
		SELECT version_id, is_applied FROM goose_db_version g
		WHERE id = (SELECT max(id) FROM goose_db_version WHERE version_id = g.version_id)`)
	if err != nil {
		return nil, fmt.Errorf("reading applied migrations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v int64
		var applied bool
		if err := rows.Scan(&v, &applied); err != nil {
			return nil, fmt.Errorf("reading applied migrations: %w", err)
		}
		out[v] = applied
	}
	return out, rows.Err()
}

func hasVersionTable(ctx context.Context, q *sql.DB) (bool, error) {
	var n int
	err := q.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'goose_db_version'`).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("reading the schema: %w", err)
	}
	return n > 0, nil
}

// pending counts the embedded migrations newer than the newest applied one.
func pending(ctx context.Context, q *sql.DB) (int, error) {
	var newest int64
	ok, err := hasVersionTable(ctx, q)
	if err != nil {
		return 0, err
	}
	if ok {
		if err := q.QueryRowContext(ctx,
			`SELECT coalesce(max(version_id), 0) FROM goose_db_version WHERE is_applied`).Scan(&newest); err != nil {
			return 0, fmt.Errorf("reading applied migrations: %w", err)
		}
	}
	entries, err := fs.Glob(schema.SQLite, "sqlite/*.sql")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if v, err := goose.NumericComponent(e); err == nil && v > newest {
			n++
		}
	}
	return n, nil
}

// Pending reports how many embedded migrations are newer than the newest
// applied one (for /readyz): one cheap read.
func (db *DB) Pending(ctx context.Context) (int, error) {
	return pending(ctx, db.readers)
}
