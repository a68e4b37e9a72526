package sqlstmt

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Conn runs statements: on a transaction, or on a pool for statements
// atomic on their own.
type Conn interface {
	// Exec runs a statement and returns the number of rows it changed.
	Exec(ctx context.Context, s *Stmt, args ...any) (int64, error)
	Query(ctx context.Context, s *Stmt, args ...any) (Rows, error)
	QueryRow(ctx context.Context, s *Stmt, args ...any) Row
	// ExecAll runs the statements, in order, with the same arguments: on
	// PostgreSQL in one round trip.
	ExecAll(ctx context.Context, stmts []*Stmt, args ...any) error
}

// Rows are a query's rows, as pgx.Rows offers them.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// Row is one row; no row is an error that IsNoRows reports.
type Row interface{ Scan(dest ...any) error }

// IsNoRows reports whether err is the error of a row that is not there.
func IsNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) || errors.Is(err, pgx.ErrNoRows) }

// pgxRunner is what a pgx transaction and pool offer.
type pgxRunner interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// PgxConn runs statements on a pgx transaction or pool, arguments and scan
// destinations as they are.
type PgxConn struct{ R pgxRunner }

func (c PgxConn) Exec(ctx context.Context, s *Stmt, args ...any) (int64, error) {
	tag, err := c.R.Exec(ctx, s.pg, args...)
	return tag.RowsAffected(), err
}

func (c PgxConn) Query(ctx context.Context, s *Stmt, args ...any) (Rows, error) {
	return c.R.Query(ctx, s.pg, args...)
}

func (c PgxConn) QueryRow(ctx context.Context, s *Stmt, args ...any) Row {
	return c.R.QueryRow(ctx, s.pg, args...)
}

func (c PgxConn) ExecAll(ctx context.Context, stmts []*Stmt, args ...any) error {
	b := &pgx.Batch{}
	for _, s := range stmts {
		b.Queue(s.pg, args...)
	}
	return c.R.SendBatch(ctx, b).Close()
}

// sqlRunner is what a database/sql transaction and pool offer.
type sqlRunner interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// SQLiteConn runs statements on a database/sql transaction or pool of the
// SQLite schema: times are integer microseconds since the epoch, lists of
// ids JSON arrays. It converts time.Time, []string and []int64 arguments,
// and scans into *time.Time, **time.Time and *[]int64. Now (microseconds)
// is what {now} binds.
type SQLiteConn struct {
	R   sqlRunner
	Now int64
}

func (c SQLiteConn) args(s *Stmt, args []any) []any {
	out := make([]any, len(args), len(args)+1)
	for i, a := range args {
		switch v := a.(type) {
		case time.Time:
			out[i] = v.UnixMicro()
		case []string:
			out[i] = jsonList(v)
		case []int64:
			out[i] = jsonList(v)
		default:
			out[i] = a
		}
	}
	if s.liteNow > 0 {
		out = append(out, c.Now)
	}
	return out
}

func jsonList[T any](v []T) string {
	if len(v) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(v) // strings and integers always marshal
	return string(b)
}

func (c SQLiteConn) Exec(ctx context.Context, s *Stmt, args ...any) (int64, error) {
	r, err := c.R.ExecContext(ctx, s.lite, c.args(s, args)...)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

func (c SQLiteConn) Query(ctx context.Context, s *Stmt, args ...any) (Rows, error) {
	rows, err := c.R.QueryContext(ctx, s.lite, c.args(s, args)...)
	if err != nil {
		return nil, err
	}
	return liteRows{rows}, nil
}

func (c SQLiteConn) QueryRow(ctx context.Context, s *Stmt, args ...any) Row {
	return liteRow{c.R.QueryRowContext(ctx, s.lite, c.args(s, args)...)}
}

func (c SQLiteConn) ExecAll(ctx context.Context, stmts []*Stmt, args ...any) error {
	for _, s := range stmts {
		if _, err := c.Exec(ctx, s, args...); err != nil {
			return err
		}
	}
	return nil
}

type liteRows struct{ *sql.Rows }

func (r liteRows) Scan(dest ...any) error { return r.Rows.Scan(liteDest(dest)...) }
func (r liteRows) Close()                 { _ = r.Rows.Close() }

type liteRow struct{ *sql.Row }

func (r liteRow) Scan(dest ...any) error { return r.Row.Scan(liteDest(dest)...) }

// liteDest wraps the destinations SQLite stores otherwise.
func liteDest(dest []any) []any {
	for i, d := range dest {
		switch p := d.(type) {
		case *time.Time, **time.Time, *[]int64:
			dest[i] = liteScanner{p}
		}
	}
	return dest
}

// liteScanner scans microseconds into a time and a JSON array into ids.
type liteScanner struct{ dest any }

func (s liteScanner) Scan(src any) error {
	switch p := s.dest.(type) {
	case *time.Time:
		us, ok := src.(int64)
		if !ok {
			return fmt.Errorf("scanning %T into a time", src)
		}
		*p = time.UnixMicro(us)
	case **time.Time:
		*p = nil
		if src != nil {
			t := new(time.Time)
			if err := (liteScanner{t}).Scan(src); err != nil {
				return err
			}
			*p = t
		}
	case *[]int64:
		var b []byte
		switch v := src.(type) {
		case string:
			b = []byte(v)
		case []byte:
			b = v
		default:
			return fmt.Errorf("scanning %T into ids", src)
		}
		*p = nil
		return json.Unmarshal(b, p)
	}
	return nil
}

// Strings runs a query of one text column and returns its values.
func Strings(ctx context.Context, c Conn, s *Stmt, args ...any) ([]string, error) {
	return Collect(ctx, c, s, args, func(r Rows) (v string, err error) { return v, r.Scan(&v) })
}

// Collect runs a query and returns its rows as scan reads them.
func Collect[T any](ctx context.Context, c Conn, s *Stmt, args []any, scan func(Rows) (T, error)) ([]T, error) {
	rows, err := c.Query(ctx, s, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
