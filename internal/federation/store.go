package federation

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Lease is a destination's sender lease as its holder knows it. Every write
// the holder makes for the destination is fenced by it: the store checks, in
// the same database transaction and while locking the lease row, that
// Holder and Generation still match, and refuses with ErrLeaseLost if not.
type Lease struct {
	Destination string
	Holder      string
	// Generation is incremented by every acquisition, so a holder that lost
	// the lease and got it back is told apart from its old self.
	Generation int64
}

// ErrLeaseLost is returned by fenced writes when another holder acquired the
// destination's lease (or it was released): nothing was written.
var ErrLeaseLost = errors.New("sender lease lost")

// ErrTxnExists is returned by SaveTxn when the destination already has a
// stored transaction.
var ErrTxnExists = errors.New("a transaction is already stored for the destination")

// ErrNoTxn is returned by CompleteTxn and DropTxn when the destination has no
// stored transaction with that id.
var ErrNoTxn = errors.New("no such stored transaction")

// Acquisition is the outcome of AcquireLease.
type Acquisition struct {
	// Acquired is true when the caller now holds Lease.
	Acquired bool
	Lease    Lease
	// Failures is the destination's number of consecutive failed attempts,
	// the exponent of its backoff.
	Failures int
	// Wait, when not acquired, is how long until it might be: until the
	// current holder's lease lapses or the destination's backoff ends,
	// whichever is later, by the database clock.
	Wait time.Duration
	// BackingOff is true when the refusal is (also) due to the backoff.
	BackingOff bool
}

// TxnItem is one outbox position that a stored transaction covers.
type TxnItem struct {
	// Source names the outbox (EDUSource.Name).
	Source string
	Pos    int64
}

// StoredTxn is a transaction stored before its first attempt and resent
// unchanged until the destination answers 200.
type StoredTxn struct {
	Destination string
	ID          string
	// EDUs is the JSON array of EDUs exactly as sent.
	EDUs           json.RawMessage
	OriginServerTS int64
	// Items are the outbox positions the EDUs came from, deleted when the
	// transaction succeeds or is dropped.
	Items []TxnItem
	// Age is how long ago the transaction was stored (database clock);
	// set by the store when reading.
	Age time.Duration
	// Attempts counts failed attempts; SameStatus how many of the last ones
	// in a row were refused with LastStatus (the rejection drop rule).
	Attempts   int
	LastStatus int
	SameStatus int
}

// FailedAttempt is what RecordFailure records.
type FailedAttempt struct {
	TxnID string
	// Status is the HTTP status the destination answered, 0 when no answer
	// arrived; a 0 ends the streak. The sender decides what a streak of a
	// status means (dropping a rejected transaction, splitting one).
	Status int
	// Wait is the backoff: no attempt starts before it has passed.
	Wait time.Duration
}

// Store is the persistence of the federation sender and receiver: the
// destinations' retry state and leases, stored outbound transactions and the
// record of inbound transactions. Backends implement it and are checked by
// the shared conformance suite (internal/storage/storetest).
type Store interface {
	// AcquireLease makes holder the destination's sender for ttl, by the
	// database clock, when nobody holds an unexpired lease on it and its
	// backoff has ended. Each acquisition increments the generation.
	AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (Acquisition, error)
	// RenewLease extends the lease to ttl from now, or returns ErrLeaseLost.
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) error
	// ReleaseLease gives the lease up, if it is still held.
	ReleaseLease(ctx context.Context, l Lease) error

	// StoredTxn returns the destination's stored transaction, or nil.
	StoredTxn(ctx context.Context, destination string) (*StoredTxn, error)
	// SaveTxn stores a transaction (fenced). It returns ErrTxnExists when
	// one is already stored.
	SaveTxn(ctx context.Context, l Lease, t *StoredTxn) error
	// CompleteTxn is called after the destination answered 200 (fenced):
	// in one database transaction it deletes the stored transaction and
	// exactly the outbox rows it covers, and resets the destination's
	// backoff. It returns how many outbox rows it deleted.
	CompleteTxn(ctx context.Context, l Lease, txnID string) (int, error)
	// DropTxn gives a transaction up (fenced): like CompleteTxn, but the
	// backoff stays as it is.
	DropTxn(ctx context.Context, l Lease, txnID string) (int, error)
	// ReplaceTxn replaces the stored transaction txnID by t (fenced, in
	// one database transaction): t has a new id and its own EDUs and
	// items, its attempts and streak start at zero, and it keeps the
	// replaced transaction's age, so the message TTL still counts from
	// the first store. Outbox rows the old one covered and t does not are
	// left queued, uncovered, at their positions. A nil t only removes the
	// stored transaction (its rows stay queued). ErrNoTxn when txnID is
	// not the stored transaction.
	ReplaceTxn(ctx context.Context, l Lease, txnID string, t *StoredTxn) error
	// RecordFailure records a failed attempt (fenced): the destination's
	// failures grow by one and its next attempt waits f.Wait; the stored
	// transaction's streak of one status grows or ends. It returns the
	// streak.
	RecordFailure(ctx context.Context, l Lease, f FailedAttempt) (sameStatus int, err error)

	// TxnDestinations lists the destinations with a stored transaction.
	TxnDestinations(ctx context.Context) ([]string, error)
	// BackingOff counts destinations whose backoff has not ended.
	BackingOff(ctx context.Context) (int, error)

	// InboundTxn returns the recorded answer to origin's transaction txnID.
	InboundTxn(ctx context.Context, origin, txnID string) (response []byte, found bool, err error)
	// RecordInboundTxn records the answer to a transaction (the first
	// record wins).
	RecordInboundTxn(ctx context.Context, origin, txnID string, response []byte) error
	// PruneInboundTxns deletes up to limit records received before cutoff.
	PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error)

	// Destinations lists up to limit destinations known or with EDUs
	// queued, the largest queue first (admin).
	Destinations(ctx context.Context, limit int) ([]DestinationState, error)
	// RetryNow ends the destination's backoff; false for a destination
	// never tried (admin).
	RetryNow(ctx context.Context, destination string) (bool, error)
	// DropQueue fences the destination's lease and deletes its stored
	// transaction and every EDU queued for it, in one transaction (admin).
	DropQueue(ctx context.Context, destination string) (int, error)
}
