package federation

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// NewStore returns the Store whose use cases run on db's statements: the
// lease fence, storing, replacing and finishing a stored transaction, the
// failure streak and the inbound record, written once for every backend.
func NewStore(db Database) Store { return &store{db: db} }

type store struct{ db Database }

func (s *store) AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (Acquisition, error) {
	var a Acquisition
	err := s.db.Each(ctx, func(ctx context.Context, q Queries) error {
		a = Acquisition{Lease: Lease{Destination: destination, Holder: holder}}
		gen, failures, ok, err := q.AcquireLease(ctx, destination, holder, ttl)
		if err != nil {
			return fmt.Errorf("acquiring lease of %s: %w", destination, err)
		}
		if ok {
			a.Acquired, a.Lease.Generation, a.Failures = true, gen, failures
			return nil
		}
		lease, retry, failures, err := q.LeaseState(ctx, destination)
		if err != nil {
			return fmt.Errorf("reading lease of %s: %w", destination, err)
		}
		a.Failures, a.Wait, a.BackingOff = failures, max(lease, retry), retry > 0
		return nil
	})
	if err != nil {
		return Acquisition{Lease: Lease{Destination: destination, Holder: holder}}, err
	}
	return a, nil
}

func (s *store) RenewLease(ctx context.Context, l Lease, ttl time.Duration) error {
	return s.db.Each(ctx, func(ctx context.Context, q Queries) error {
		held, err := q.RenewLease(ctx, l, ttl)
		if err != nil {
			return fmt.Errorf("renewing lease of %s: %w", l.Destination, err)
		}
		return heldOrLost(held)
	})
}

func (s *store) ReleaseLease(ctx context.Context, l Lease) error {
	return s.db.Each(ctx, func(ctx context.Context, q Queries) error {
		if err := q.ReleaseLease(ctx, l); err != nil {
			return fmt.Errorf("releasing lease of %s: %w", l.Destination, err)
		}
		return nil
	})
}

func heldOrLost(held bool) error {
	if !held {
		return ErrLeaseLost
	}
	return nil
}

// fence locks the destination's lease row and checks that l still holds it.
// Every write of a holder starts with it (or with a statement carrying the
// same condition), in the same transaction: an acquisition by someone else
// either committed before (the check fails) or waits for this transaction
// to end.
func fence(ctx context.Context, q Queries, l Lease) error {
	held, err := q.LockLease(ctx, l)
	if err != nil {
		return fmt.Errorf("checking lease of %s: %w", l.Destination, err)
	}
	return heldOrLost(held)
}

func (s *store) StoredTxn(ctx context.Context, destination string) (*StoredTxn, error) {
	var t *StoredTxn
	err := s.db.Read(ctx, func(ctx context.Context, q Queries) error {
		var err error
		t, err = q.StoredTxn(ctx, destination)
		if err != nil || t == nil {
			return err
		}
		t.Destination = destination
		t.Items, err = q.TxnItems(ctx, destination)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored transaction for %s: %w", destination, err)
	}
	return t, nil
}

func (s *store) SaveTxn(ctx context.Context, l Lease, t *StoredTxn) error {
	return s.db.InTx(ctx, func(ctx context.Context, q Queries) error {
		if err := fence(ctx, q, l); err != nil {
			return err
		}
		inserted, err := q.InsertTxn(ctx, l.Destination, t)
		if err != nil {
			return fmt.Errorf("storing transaction for %s: %w", l.Destination, err)
		}
		if !inserted {
			return ErrTxnExists
		}
		if err := q.InsertTxnItems(ctx, l.Destination, t.Items); err != nil {
			return fmt.Errorf("storing transaction items for %s: %w", l.Destination, err)
		}
		return nil
	})
}

func (s *store) ReplaceTxn(ctx context.Context, l Lease, txnID string, t *StoredTxn) error {
	return s.db.InTx(ctx, func(ctx context.Context, q Queries) error {
		if err := fence(ctx, q, l); err != nil {
			return err
		}
		if err := q.DeleteTxnItems(ctx, l.Destination); err != nil {
			return fmt.Errorf("replacing transaction items for %s: %w", l.Destination, err)
		}
		if t == nil {
			found, err := q.DeleteTxn(ctx, l.Destination, txnID)
			if err != nil {
				return fmt.Errorf("removing stored transaction for %s: %w", l.Destination, err)
			}
			return foundOrNoTxn(found)
		}
		// An update in place keeps the creation time: the TTL counts from
		// the first store, however often the transaction is split.
		found, err := q.UpdateTxn(ctx, l.Destination, txnID, t)
		if err != nil {
			return fmt.Errorf("replacing stored transaction for %s: %w", l.Destination, err)
		}
		if !found {
			return ErrNoTxn
		}
		if err := q.InsertTxnItems(ctx, l.Destination, t.Items); err != nil {
			return fmt.Errorf("storing transaction items for %s: %w", l.Destination, err)
		}
		return nil
	})
}

func foundOrNoTxn(found bool) error {
	if !found {
		return ErrNoTxn
	}
	return nil
}

func (s *store) CompleteTxn(ctx context.Context, l Lease, txnID string) (int, error) {
	return s.finishTxn(ctx, l, txnID, true)
}

func (s *store) DropTxn(ctx context.Context, l Lease, txnID string) (int, error) {
	return s.finishTxn(ctx, l, txnID, false)
}

// finishTxn deletes a stored transaction and exactly the outbox rows it
// covers, fenced, in one transaction; succeeded also ends the backoff.
func (s *store) finishTxn(ctx context.Context, l Lease, txnID string, succeeded bool) (int, error) {
	var deleted int
	err := s.db.InTx(ctx, func(ctx context.Context, q Queries) error {
		deleted = 0
		if succeeded {
			held, err := q.ResetBackoff(ctx, l)
			if err != nil {
				return fmt.Errorf("resetting backoff of %s: %w", l.Destination, err)
			}
			if !held {
				return ErrLeaseLost
			}
		} else if err := fence(ctx, q, l); err != nil {
			return err
		}
		items, err := q.TxnItems(ctx, l.Destination)
		if err != nil {
			return fmt.Errorf("reading transaction items for %s: %w", l.Destination, err)
		}
		var sources []string
		bySource := map[string][]int64{}
		for _, it := range items {
			if _, ok := bySource[it.Source]; !ok {
				sources = append(sources, it.Source)
			}
			bySource[it.Source] = append(bySource[it.Source], it.Pos)
		}
		found, err := q.DeleteTxn(ctx, l.Destination, txnID)
		if err != nil {
			return fmt.Errorf("deleting stored transaction for %s: %w", l.Destination, err)
		}
		if !found {
			return ErrNoTxn
		}
		for _, source := range sources {
			n, err := q.DeleteOutboxRows(ctx, source, l.Destination, bySource[source])
			if errors.Is(err, ErrUnknownSource) {
				return fmt.Errorf("stored transaction for %s covers rows of unknown EDU source %q", l.Destination, source)
			}
			if err != nil {
				return err
			}
			deleted += n
		}
		return nil
	})
	return deleted, err
}

func (s *store) RecordFailure(ctx context.Context, l Lease, f FailedAttempt) (int, error) {
	var same int
	err := s.db.InTx(ctx, func(ctx context.Context, q Queries) error {
		held, err := q.BackOff(ctx, l, f.Wait)
		if err != nil {
			return fmt.Errorf("recording failure for %s: %w", l.Destination, err)
		}
		if !held {
			return ErrLeaseLost
		}
		n, found, err := q.CountAttempt(ctx, l.Destination, f.TxnID, f.Status)
		if err != nil {
			return fmt.Errorf("recording failure for %s: %w", l.Destination, err)
		}
		same = n
		return foundOrNoTxn(found)
	})
	return same, err
}

func (s *store) TxnDestinations(ctx context.Context) ([]string, error) {
	var out []string
	err := s.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		out, err = q.TxnDestinations(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing stored transactions: %w", err)
	}
	return out, nil
}

func (s *store) BackingOff(ctx context.Context) (int, error) {
	var n int
	err := s.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		n, err = q.BackingOff(ctx)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("counting destinations backing off: %w", err)
	}
	return n, nil
}

func (s *store) InboundTxn(ctx context.Context, origin, txnID string) ([]byte, bool, error) {
	var resp []byte
	var found bool
	err := s.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		resp, found, err = q.InboundTxn(ctx, origin, txnID)
		return err
	})
	if err != nil {
		return nil, false, fmt.Errorf("looking up inbound transaction: %w", err)
	}
	return resp, found, nil
}

func (s *store) RecordInboundTxn(ctx context.Context, origin, txnID string, response []byte) error {
	err := s.db.Each(ctx, func(ctx context.Context, q Queries) error {
		return q.RecordInboundTxn(ctx, origin, txnID, response)
	})
	if err != nil {
		return fmt.Errorf("recording inbound transaction: %w", err)
	}
	return nil
}

func (s *store) PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int
	err := s.db.Each(ctx, func(ctx context.Context, q Queries) (err error) {
		n, err = q.PruneInboundTxns(ctx, cutoff, limit)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("pruning inbound transactions: %w", err)
	}
	return n, nil
}
