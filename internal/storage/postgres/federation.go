package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
)

// FederationDB returns the federation store's statements and runner
// (federation.NewStore writes the use cases on them).
func (db *DB) FederationDB() federation.Database { return fedDB{db} }

// fedDB runs the federation statements: in a transaction (retried after a
// deadlock), or on the pool.
type fedDB struct{ db *DB }

func (d fedDB) InTx(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return d.db.inTx(ctx, func(tx pgx.Tx) error { return fn(ctx, newFedQueries(tx)) })
}

func (d fedDB) Each(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return fn(ctx, newFedQueries(d.db.pool))
}

func (d fedDB) Read(ctx context.Context, fn func(context.Context, federation.Queries) error) error {
	return fn(ctx, newFedQueries(d.db.pool))
}

// conn is a pool or a transaction.
type conn interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// fedQueries implements federation.Queries. Its tables are federation's,
// and the outbox rows a stored transaction covers (outboxTables).
type fedQueries struct {
	sqlstmt.FedQueries
	c conn
}

func newFedQueries(c conn) fedQueries {
	return fedQueries{FedQueries: sqlstmt.FedQueries{C: sqlstmt.PgxConn{R: c}}, c: c}
}

// micros passes a duration to SQL as a whole number of microseconds, the
// resolution of timestamptz.
func micros(d time.Duration) int64 { return d.Microseconds() }

func msDuration(ms float64) time.Duration {
	if ms <= 0 {
		return 0
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// affected is whether a statement matched a row.
func affected(tag pgconn.CommandTag, err error) (bool, error) {
	return err == nil && tag.RowsAffected() > 0, err
}

// scanFound scans a row that may not exist.
func scanFound(row pgx.Row, dest ...any) (bool, error) {
	err := row.Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (q fedQueries) AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (int64, int, bool, error) {
	var gen int64
	var failures int
	// ON CONFLICT DO UPDATE locks the row, so concurrent acquirers queue and
	// re-check the condition one after the other: one wins.
	ok, err := scanFound(q.c.QueryRow(ctx, `
		INSERT INTO federation_destinations AS d (destination, lease_holder, lease_generation, lease_until)
		VALUES ($1, $2, 1, now() + $3 * interval '1 microsecond')
		ON CONFLICT (destination) DO UPDATE SET
			lease_holder = excluded.lease_holder,
			lease_generation = d.lease_generation + 1,
			lease_until = excluded.lease_until
		WHERE (d.lease_holder IS NULL OR d.lease_until <= now())
		  AND (d.retry_at IS NULL OR d.retry_at <= now())
		RETURNING d.lease_generation, d.failures`,
		destination, holder, micros(ttl)), &gen, &failures)
	return gen, failures, ok, err
}

func (q fedQueries) LeaseState(ctx context.Context, destination string) (time.Duration, time.Duration, int, error) {
	var leaseMS, retryMS float64
	var failures int
	err := q.c.QueryRow(ctx, `
		SELECT CASE WHEN lease_holder IS NOT NULL
		            THEN coalesce(extract(epoch FROM lease_until - now()) * 1000, 0) ELSE 0 END,
		       coalesce(extract(epoch FROM retry_at - now()) * 1000, 0), failures
		FROM federation_destinations WHERE destination = $1`, destination).Scan(&leaseMS, &retryMS, &failures)
	return msDuration(leaseMS), msDuration(retryMS), failures, err
}

func (q fedQueries) RenewLease(ctx context.Context, l federation.Lease, ttl time.Duration) (bool, error) {
	return affected(q.c.Exec(ctx, `
		UPDATE federation_destinations SET lease_until = now() + $4 * interval '1 microsecond'
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`,
		l.Destination, l.Holder, l.Generation, micros(ttl)))
}

func (q fedQueries) LockLease(ctx context.Context, l federation.Lease) (bool, error) {
	var one int
	return scanFound(q.c.QueryRow(ctx, `
		SELECT 1 FROM federation_destinations
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3
		FOR NO KEY UPDATE`, l.Destination, l.Holder, l.Generation), &one)
}

func (q fedQueries) BackOff(ctx context.Context, l federation.Lease, wait time.Duration) (bool, error) {
	return affected(q.c.Exec(ctx, `
		UPDATE federation_destinations SET failures = failures + 1, retry_at = now() + $4 * interval '1 microsecond'
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`,
		l.Destination, l.Holder, l.Generation, micros(wait)))
}

func (q fedQueries) StoredTxn(ctx context.Context, destination string) (*federation.StoredTxn, error) {
	t := &federation.StoredTxn{Destination: destination}
	var ageMS float64
	found, err := scanFound(q.c.QueryRow(ctx, `
		SELECT txn_id, edus, origin_server_ts, extract(epoch FROM now() - created_at) * 1000,
		       attempts, last_status, same_status
		FROM federation_txns WHERE destination = $1`, destination),
		&t.ID, &t.EDUs, &t.OriginServerTS, &ageMS, &t.Attempts, &t.LastStatus, &t.SameStatus)
	if !found {
		return nil, err
	}
	t.Age = msDuration(ageMS)
	return t, nil
}

func (q fedQueries) InsertTxnItems(ctx context.Context, destination string, items []federation.TxnItem) error {
	sources := make([]string, len(items))
	positions := make([]int64, len(items))
	for i, it := range items {
		sources[i], positions[i] = it.Source, it.Pos
	}
	_, err := q.c.Exec(ctx, `
		INSERT INTO federation_txn_items (destination, source, pos)
		SELECT $1, s, p FROM unnest($2::text[], $3::bigint[]) AS i(s, p)`,
		destination, sources, positions)
	return err
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
	tag, err := q.c.Exec(ctx, `DELETE FROM `+table+` WHERE destination = $1 AND pos = ANY($2::bigint[])`,
		destination, positions)
	return int(tag.RowsAffected()), err
}

func (q fedQueries) BackingOff(ctx context.Context) (int, error) {
	var n int
	err := q.c.QueryRow(ctx, `SELECT count(*) FROM federation_destinations WHERE retry_at > now()`).Scan(&n)
	return n, err
}

func (q fedQueries) PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	tag, err := q.c.Exec(ctx, `
		DELETE FROM federation_inbound_txns WHERE ctid = ANY (ARRAY (
			SELECT ctid FROM federation_inbound_txns WHERE received_at < $1 LIMIT $2))`, cutoff, limit)
	return int(tag.RowsAffected()), err
}
