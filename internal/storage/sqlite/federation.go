package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
)

// Federation returns the federation store.
func (db *DB) Federation() federation.Store { return federation.NewStore(db.FederationDB()) }

// FederationDB returns the federation store's statements and runner. The
// lease logic is the PostgreSQL backend's: there is one process, but the
// sender does not know that, and the same fencing keeps a stale holder (a
// goroutine that lost its lease) from writing. The database clock is this
// process's clock, read with the writer's turn held; every write runs on the
// writer connection, so a fence check and the writes it guards are never
// interleaved with another holder's.
func (db *DB) FederationDB() federation.Database { return fedDB{db} }

type fedDB struct{ db *DB }

func (d fedDB) InTx(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return d.db.write(ctx, func(tx *sql.Tx) error { return fn(ctx, newFedQueries(tx)) })
}

// Each runs the statements in one write transaction: every write goes
// through the writer anyway.
func (d fedDB) Each(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return d.InTx(ctx, fn)
}

func (d fedDB) Read(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return d.db.read(ctx, func(tx *sql.Tx) error { return fn(ctx, newFedQueries(tx)) })
}

// fedQueries implements federation.Queries. Times are INTEGER microseconds.
type fedQueries struct {
	sqlstmt.FedQueries
	tx *sql.Tx
}

func newFedQueries(tx *sql.Tx) fedQueries {
	return fedQueries{FedQueries: sqlstmt.FedQueries{C: sqlstmt.SQLiteConn{R: tx, Now: micros(time.Now())}}, tx: tx}
}

func usDuration(us int64) time.Duration {
	if us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}

// rowsAffected is whether a statement matched a row.
func rowsAffected(r sql.Result, err error) (bool, error) {
	if err != nil {
		return false, err
	}
	n, err := r.RowsAffected()
	return n > 0, err
}

// scanFound scans a row that may not exist.
func scanFound(row *sql.Row, dest ...any) (bool, error) {
	err := row.Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (q fedQueries) AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (int64, int, bool, error) {
	var gen int64
	var failures int
	now := micros(time.Now())
	ok, err := scanFound(q.tx.QueryRowContext(ctx, `
		INSERT INTO federation_destinations AS d (destination, lease_holder, lease_generation, lease_until)
		VALUES (?1, ?2, 1, ?4)
		ON CONFLICT (destination) DO UPDATE SET
			lease_holder = excluded.lease_holder,
			lease_generation = d.lease_generation + 1,
			lease_until = excluded.lease_until
		WHERE (d.lease_holder IS NULL OR d.lease_until <= ?3)
		  AND (d.retry_at IS NULL OR d.retry_at <= ?3)
		RETURNING lease_generation, failures`,
		destination, holder, now, now+ttl.Microseconds()), &gen, &failures)
	return gen, failures, ok, err
}

func (q fedQueries) LeaseState(ctx context.Context, destination string) (time.Duration, time.Duration, int, error) {
	var cur sql.NullString
	var until, retry sql.NullInt64
	var failures int
	err := q.tx.QueryRowContext(ctx, `
		SELECT lease_holder, lease_until, retry_at, failures
		FROM federation_destinations WHERE destination = ?`, destination).Scan(&cur, &until, &retry, &failures)
	now := micros(time.Now())
	var lease, wait time.Duration
	if cur.Valid && until.Valid {
		lease = usDuration(until.Int64 - now)
	}
	if retry.Valid {
		wait = usDuration(retry.Int64 - now)
	}
	return lease, wait, failures, err
}

func (q fedQueries) RenewLease(ctx context.Context, l federation.Lease, ttl time.Duration) (bool, error) {
	return rowsAffected(q.tx.ExecContext(ctx, `
		UPDATE federation_destinations SET lease_until = ?
		WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
		micros(time.Now())+ttl.Microseconds(), l.Destination, l.Holder, l.Generation))
}

// LockLease needs no lock: the write transaction holds the writer.
func (q fedQueries) LockLease(ctx context.Context, l federation.Lease) (bool, error) {
	var one int
	return scanFound(q.tx.QueryRowContext(ctx, `
		SELECT 1 FROM federation_destinations
		WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
		l.Destination, l.Holder, l.Generation), &one)
}

func (q fedQueries) BackOff(ctx context.Context, l federation.Lease, wait time.Duration) (bool, error) {
	return rowsAffected(q.tx.ExecContext(ctx, `
		UPDATE federation_destinations SET failures = failures + 1, retry_at = ?
		WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
		micros(time.Now())+wait.Microseconds(), l.Destination, l.Holder, l.Generation))
}

func (q fedQueries) StoredTxn(ctx context.Context, destination string) (*federation.StoredTxn, error) {
	t := &federation.StoredTxn{Destination: destination}
	var edus []byte
	var created int64
	found, err := scanFound(q.tx.QueryRowContext(ctx, `
		SELECT txn_id, edus, origin_server_ts, created_at, attempts, last_status, same_status
		FROM federation_txns WHERE destination = ?`, destination),
		&t.ID, &edus, &t.OriginServerTS, &created, &t.Attempts, &t.LastStatus, &t.SameStatus)
	if !found {
		return nil, err
	}
	t.EDUs, t.Age = edus, usDuration(micros(time.Now())-created)
	return t, nil
}

func (q fedQueries) InsertTxnItems(ctx context.Context, destination string, items []federation.TxnItem) error {
	for chunk := range slices.Chunk(items, maxRowsPerStatement) {
		args := make([]any, 0, 3*len(chunk))
		for _, it := range chunk {
			args = append(args, destination, it.Source, it.Pos)
		}
		if _, err := q.tx.ExecContext(ctx, `
			INSERT INTO federation_txn_items (destination, source, pos) VALUES `+placeholders(len(chunk), 3), args...); err != nil {
			return err
		}
	}
	return nil
}

// outboxTables are the outboxes whose rows stored transactions cover, by
// EDU source.
var outboxTables = map[string]string{inbox.OutboxSource: "todevice_outbox", devicelists.OutboxSource: "device_list_outbox"}

// DeleteOutboxRows deletes exactly the listed positions of one destination,
// never a range, in the fenced transaction that finishes a stored one.
func (q fedQueries) DeleteOutboxRows(ctx context.Context, source, destination string, positions []int64) (int, error) {
	table, ok := outboxTables[source]
	if !ok {
		return 0, federation.ErrUnknownSource
	}
	return deleteRowsAt(ctx, q.tx, table, destination, positions)
}

func (q fedQueries) BackingOff(ctx context.Context) (int, error) {
	var n int
	err := q.tx.QueryRowContext(ctx, `SELECT count(*) FROM federation_destinations WHERE retry_at > ?`,
		micros(time.Now())).Scan(&n)
	return n, err
}

func (q fedQueries) PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	r, err := q.tx.ExecContext(ctx, `
		DELETE FROM federation_inbound_txns WHERE rowid IN (
			SELECT rowid FROM federation_inbound_txns WHERE received_at < ? LIMIT ?)`, micros(cutoff), limit)
	if err != nil {
		return 0, err
	}
	n, err := r.RowsAffected()
	return int(n), err
}
