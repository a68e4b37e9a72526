package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	schema "github.com/todeviced/todeviced/sql"
)

// migrationLockID is the advisory lock replicas take while migrating, so
// replicas starting together apply each migration once.
const migrationLockID int64 = 0x746f646576696365 // "todevice"

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

func provider(ctx context.Context, url string) (*goose.Provider, *sql.DB, error) {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing database URL: %w", err)
	}
	cc.RuntimeParams["application_name"] = "todeviced-migrate"
	db := stdlib.OpenDB(*cc)
	// Connect first, so that an unreachable server is reported as such
	// rather than as a failure of the migration library.
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, nil, connecting(&cc.Config, err)
	}
	fsys, err := fs.Sub(schema.Postgres, "postgres")
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithSessionLocker(locker))
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("loading migrations: %w", err)
	}
	return p, db, nil
}

// Migrate applies pending migrations under the advisory lock and returns how
// many it applied. url must reach PostgreSQL directly (session lock).
func Migrate(ctx context.Context, url string, log *slog.Logger) (int, error) {
	p, db, err := provider(ctx, url)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	results, err := p.Up(ctx)
	if err != nil {
		return 0, fmt.Errorf("applying migrations: %w", err)
	}
	for _, r := range results {
		log.InfoContext(ctx, "applied migration", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration.String())
	}
	return len(results), nil
}

// Status lists every known migration and whether it is applied.
func Status(ctx context.Context, url string) ([]MigrationStatus, error) {
	p, db, err := provider(ctx, url)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading migration status: %w", err)
	}
	out := make([]MigrationStatus, len(st))
	for i, s := range st {
		out[i] = MigrationStatus{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied}
	}
	return out, nil
}

// Pending reports how many embedded migrations are newer than the newest
// applied one (for /readyz): one cheap query on the pool.
func (db *DB) Pending(ctx context.Context) (int, error) {
	var applied int64
	err := db.pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM goose_db_version WHERE is_applied`).Scan(&applied)
	if err != nil {
		return 0, fmt.Errorf("reading applied migrations: %w", err)
	}
	entries, err := fs.Glob(schema.Postgres, "postgres/*.sql")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		v, err := goose.NumericComponent(e)
		if err == nil && v > applied {
			n++
		}
	}
	return n, nil
}
