package federation

import (
	"context"
	"fmt"
	"time"
)

// DestinationState is the administrator's view of one destination: its
// queued EDUs (every outbox), its backoff, its lease and its stored
// transaction. Times are the database's.
type DestinationState struct {
	Destination string
	// Queued counts the EDUs waiting in every outbox.
	Queued int64
	// Oldest is when the oldest of them was queued (nil if none).
	Oldest *time.Time
	// Failures in a row, and when the backoff ends (nil: not backing off).
	Failures int
	RetryAt  *time.Time
	// LeaseHolder is the sender holding the lease ("" if none) until
	// LeaseUntil.
	LeaseHolder string
	LeaseUntil  *time.Time
	// TxnID is the stored transaction ("" if none), its attempts and the
	// HTTP status of its last failed attempt (0: none or no answer).
	TxnID       string
	TxnAttempts int
	LastStatus  int
}

// MaxAdminDestinations bounds the destinations the admin API lists.
const MaxAdminDestinations = 1000

// AdminQueries are the admin API's statements of the federation store.
type AdminQueries interface {
	// AdminDestinations lists up to limit destinations known or with EDUs
	// queued, the largest queue first.
	AdminDestinations(ctx context.Context, limit int) ([]DestinationState, error)
	// AdminResetBackoff ends the destination's backoff (its failures and
	// retry time), whoever holds its lease. found is false for a
	// destination never tried.
	AdminResetBackoff(ctx context.Context, destination string) (found bool, err error)
	// AdminFenceLease ends the destination's lease and increments its
	// generation, so a sender in flight loses every fenced write.
	AdminFenceLease(ctx context.Context, destination string) error
	// AdminDropQueue deletes the destination's stored transaction and
	// every EDU queued for it, and returns how many EDUs it deleted.
	AdminDropQueue(ctx context.Context, destination string) (int, error)
}

// Destinations lists up to limit destinations, the largest queue first.
func (s *store) Destinations(ctx context.Context, limit int) ([]DestinationState, error) {
	var out []DestinationState
	err := s.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		out, err = q.AdminDestinations(ctx, min(max(limit, 1), MaxAdminDestinations))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing destinations: %w", err)
	}
	return out, nil
}

// RetryNow ends the destination's backoff, so its next attempt may start
// at once.
func (s *store) RetryNow(ctx context.Context, destination string) (bool, error) {
	var found bool
	err := s.db.Each(ctx, func(ctx context.Context, q Queries) (err error) {
		found, err = q.AdminResetBackoff(ctx, destination)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("resetting backoff of %s: %w", destination, err)
	}
	return found, nil
}

// DropQueue deletes everything queued for the destination, in one
// transaction that first fences its lease: a sender in flight loses it (its
// completion is refused, as any fenced write of a lost lease) and no EDU it
// had read survives to be sent twice or half. It returns how many EDUs it
// deleted.
func (s *store) DropQueue(ctx context.Context, destination string) (int, error) {
	var n int
	err := s.db.InTx(ctx, func(ctx context.Context, q Queries) (err error) {
		if err := q.AdminFenceLease(ctx, destination); err != nil {
			return err
		}
		n, err = q.AdminDropQueue(ctx, destination)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("dropping the queue of %s: %w", destination, err)
	}
	return n, nil
}

// RetryNow makes this sender try the destination at once, forgetting the
// backoff it was waiting out (the admin's "retry now", after the store's
// RetryNow).
func (s *Sender) RetryNow(destination string) {
	s.mu.Lock()
	if st := s.dests[destination]; st != nil {
		st.notBefore = time.Time{}
		if st.timer != nil {
			st.timer.Stop()
			st.timer = nil
		}
	}
	s.pending[destination] = struct{}{}
	s.mu.Unlock()
	s.signal()
}
