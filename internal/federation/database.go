package federation

import (
	"context"
	"errors"
	"time"
)

// Database is what a storage backend provides for the federation store: its
// statements (Queries) and three ways to run them. The use cases, the order
// of their statements and their transactions are written once, in this
// package (NewStore); a backend writes each statement in its dialect and
// keeps its own connection handling and per-call deadline. Each call of a
// Database method is one database call: one transaction, or on PostgreSQL
// statements on the pool.
type Database interface {
	// InTx runs fn in one database transaction, committed when fn returns
	// nil and rolled back otherwise. A backend may run fn again after a
	// deadlock or serialization failure, so fn starts from scratch.
	InTx(ctx context.Context, fn func(context.Context, Queries) error) error
	// Each runs fn's statements, each atomic on its own, no transaction
	// needed around them (PostgreSQL runs them on the pool; SQLite, whose
	// writes all go through one writer, runs them in one write
	// transaction).
	Each(ctx context.Context, fn func(context.Context, Queries) error) error
	// Read runs fn's statements, which only read.
	Read(ctx context.Context, fn func(context.Context, Queries) error) error
}

// ErrUnknownSource is returned by Queries.DeleteOutboxRows for a source the
// backend has no outbox table for.
var ErrUnknownSource = errors.New("unknown EDU source")

// Queries are the federation store's statements, each one SQL statement run
// where the Database call that handed them out runs (a transaction or the
// pool). Times are the database clock's.
type Queries interface {
	AdminQueries
	// AcquireLease makes holder the destination's lease holder until ttl
	// from now, creating the destination, when nobody holds an unexpired
	// lease and its backoff has ended; the generation grows by one. ok is
	// false (nothing written) otherwise.
	AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (generation int64, failures int, ok bool, err error)
	// LeaseState reads how long the destination's lease and backoff still
	// run (0 when over or unset) and its failures.
	LeaseState(ctx context.Context, destination string) (lease, retry time.Duration, failures int, err error)
	// RenewLease moves the end of l's lease to ttl from now; held is false
	// when l does not hold it.
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) (held bool, err error)
	// ReleaseLease clears l's lease, if l holds it.
	ReleaseLease(ctx context.Context, l Lease) error
	// LockLease locks the destination's row until the transaction ends if l
	// holds its lease (the fence of every holder's write); held is false
	// otherwise.
	LockLease(ctx context.Context, l Lease) (held bool, err error)
	// ResetBackoff ends the destination's backoff if l holds its lease.
	ResetBackoff(ctx context.Context, l Lease) (held bool, err error)
	// BackOff counts a failure and delays the next attempt by wait, if l
	// holds the lease.
	BackOff(ctx context.Context, l Lease, wait time.Duration) (held bool, err error)
	// CountAttempt counts a failed attempt of the stored transaction txnID
	// answered with status (0: no answer) and returns the streak of that
	// status; found is false when txnID is not stored.
	CountAttempt(ctx context.Context, destination, txnID string, status int) (sameStatus int, found bool, err error)

	// StoredTxn reads the destination's stored transaction without its
	// items (Age set), or nil.
	StoredTxn(ctx context.Context, destination string) (*StoredTxn, error)
	// TxnItems reads the items of the destination's stored transaction,
	// ordered by source and position.
	TxnItems(ctx context.Context, destination string) ([]TxnItem, error)
	// InsertTxn stores t (without its items) created now; inserted is
	// false when the destination already has one.
	InsertTxn(ctx context.Context, destination string, t *StoredTxn) (inserted bool, err error)
	// InsertTxnItems adds items to the destination's stored transaction.
	InsertTxnItems(ctx context.Context, destination string, items []TxnItem) error
	// UpdateTxn replaces the stored transaction txnID by t in place
	// (keeping its creation time), attempts and streak reset.
	UpdateTxn(ctx context.Context, destination, txnID string, t *StoredTxn) (found bool, err error)
	// DeleteTxn deletes the stored transaction txnID and its items.
	DeleteTxn(ctx context.Context, destination, txnID string) (found bool, err error)
	// DeleteTxnItems deletes the items of the destination's stored
	// transaction.
	DeleteTxnItems(ctx context.Context, destination string) error
	// DeleteOutboxRows deletes exactly the EDUs at positions of destination
	// from the outbox of source (the source's own statement) and counts
	// them; ErrUnknownSource for a source without an outbox.
	DeleteOutboxRows(ctx context.Context, source, destination string, positions []int64) (int, error)

	// TxnDestinations lists the destinations with a stored transaction.
	TxnDestinations(ctx context.Context) ([]string, error)
	// BackingOff counts destinations whose backoff has not ended.
	BackingOff(ctx context.Context) (int, error)

	// InboundTxn reads the recorded answer to origin's transaction txnID.
	InboundTxn(ctx context.Context, origin, txnID string) (response []byte, found bool, err error)
	// RecordInboundTxn records the answer, unless one is recorded.
	RecordInboundTxn(ctx context.Context, origin, txnID string, response []byte) error
	// PruneInboundTxns deletes up to limit records received before cutoff.
	PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error)
}
