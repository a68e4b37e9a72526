package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
)

// federationStore implements federation.Store. Its tables are federation's;
// the outbox rows a transaction covers are deleted with their owner's own
// statement (the inbox's deleteOutboxRows, devicelists'
// deleteDeviceListOutboxRows) inside the fenced transaction.
type federationStore struct{ db *DB }

// micros passes a duration to SQL as a whole number of microseconds, the
// resolution of timestamptz.
func micros(d time.Duration) int64 { return d.Microseconds() }

func msDuration(ms float64) time.Duration {
	if ms <= 0 {
		return 0
	}
	return time.Duration(ms * float64(time.Millisecond))
}

func (s *federationStore) AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (federation.Acquisition, error) {
	a := federation.Acquisition{Lease: federation.Lease{Destination: destination, Holder: holder}}
	// ON CONFLICT DO UPDATE locks the row, so concurrent acquirers queue and
	// re-check the condition one after the other: one wins.
	err := s.db.pool.QueryRow(ctx, `
		INSERT INTO federation_destinations AS d (destination, lease_holder, lease_generation, lease_until)
		VALUES ($1, $2, 1, now() + $3 * interval '1 microsecond')
		ON CONFLICT (destination) DO UPDATE SET
			lease_holder = excluded.lease_holder,
			lease_generation = d.lease_generation + 1,
			lease_until = excluded.lease_until
		WHERE (d.lease_holder IS NULL OR d.lease_until <= now())
		  AND (d.retry_at IS NULL OR d.retry_at <= now())
		RETURNING d.lease_generation, d.failures`,
		destination, holder, micros(ttl)).Scan(&a.Lease.Generation, &a.Failures)
	if err == nil {
		a.Acquired = true
		return a, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("acquiring lease of %s: %w", destination, err)
	}
	var leaseMS, retryMS float64
	err = s.db.pool.QueryRow(ctx, `
		SELECT CASE WHEN lease_holder IS NOT NULL
		            THEN coalesce(extract(epoch FROM lease_until - now()) * 1000, 0) ELSE 0 END,
		       coalesce(extract(epoch FROM retry_at - now()) * 1000, 0), failures
		FROM federation_destinations WHERE destination = $1`, destination).Scan(&leaseMS, &retryMS, &a.Failures)
	if err != nil {
		return a, fmt.Errorf("reading lease of %s: %w", destination, err)
	}
	a.Wait = max(msDuration(leaseMS), msDuration(retryMS))
	a.BackingOff = retryMS > 0
	return a, nil
}

func (s *federationStore) RenewLease(ctx context.Context, l federation.Lease, ttl time.Duration) error {
	tag, err := s.db.pool.Exec(ctx, `
		UPDATE federation_destinations SET lease_until = now() + $4 * interval '1 microsecond'
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`,
		l.Destination, l.Holder, l.Generation, micros(ttl))
	if err != nil {
		return fmt.Errorf("renewing lease of %s: %w", l.Destination, err)
	}
	if tag.RowsAffected() == 0 {
		return federation.ErrLeaseLost
	}
	return nil
}

func (s *federationStore) ReleaseLease(ctx context.Context, l federation.Lease) error {
	_, err := s.db.pool.Exec(ctx, `
		UPDATE federation_destinations SET lease_holder = NULL, lease_until = NULL
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`,
		l.Destination, l.Holder, l.Generation)
	if err != nil {
		return fmt.Errorf("releasing lease of %s: %w", l.Destination, err)
	}
	return nil
}

// fence locks the destination's lease row and checks that l still holds it.
// Every write of a holder starts with it (or with an UPDATE carrying the same
// condition), in the same transaction: an acquisition by someone else either
// committed before (the check fails) or waits for this transaction to end.
func fence(ctx context.Context, tx pgx.Tx, l federation.Lease) error {
	var one int
	err := tx.QueryRow(ctx, `
		SELECT 1 FROM federation_destinations
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3
		FOR NO KEY UPDATE`, l.Destination, l.Holder, l.Generation).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return federation.ErrLeaseLost
	}
	if err != nil {
		return fmt.Errorf("checking lease of %s: %w", l.Destination, err)
	}
	return nil
}

func (s *federationStore) StoredTxn(ctx context.Context, destination string) (*federation.StoredTxn, error) {
	t := &federation.StoredTxn{Destination: destination}
	var ageMS float64
	err := s.db.pool.QueryRow(ctx, `
		SELECT txn_id, edus, origin_server_ts, extract(epoch FROM now() - created_at) * 1000,
		       attempts, last_status, same_status
		FROM federation_txns WHERE destination = $1`, destination).
		Scan(&t.ID, &t.EDUs, &t.OriginServerTS, &ageMS, &t.Attempts, &t.LastStatus, &t.SameStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading stored transaction for %s: %w", destination, err)
	}
	t.Age = msDuration(ageMS)
	rows, err := s.db.pool.Query(ctx, `
		SELECT source, pos FROM federation_txn_items WHERE destination = $1 ORDER BY source, pos`, destination)
	if err != nil {
		return nil, fmt.Errorf("reading stored transaction items for %s: %w", destination, err)
	}
	t.Items, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (federation.TxnItem, error) {
		var it federation.TxnItem
		err := r.Scan(&it.Source, &it.Pos)
		return it, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored transaction items for %s: %w", destination, err)
	}
	return t, nil
}

func (s *federationStore) SaveTxn(ctx context.Context, l federation.Lease, t *federation.StoredTxn) error {
	sources := make([]string, len(t.Items))
	positions := make([]int64, len(t.Items))
	for i, it := range t.Items {
		sources[i], positions[i] = it.Source, it.Pos
	}
	return s.db.inTx(ctx, func(tx pgx.Tx) error {
		if err := fence(ctx, tx, l); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO federation_txns (destination, txn_id, edus, origin_server_ts)
			VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
			l.Destination, t.ID, []byte(t.EDUs), t.OriginServerTS)
		if err != nil {
			return fmt.Errorf("storing transaction for %s: %w", l.Destination, err)
		}
		if tag.RowsAffected() == 0 {
			return federation.ErrTxnExists
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO federation_txn_items (destination, source, pos)
			SELECT $1, s, p FROM unnest($2::text[], $3::bigint[]) AS i(s, p)`,
			l.Destination, sources, positions); err != nil {
			return fmt.Errorf("storing transaction items for %s: %w", l.Destination, err)
		}
		return nil
	})
}

func (s *federationStore) ReplaceTxn(ctx context.Context, l federation.Lease, txnID string, t *federation.StoredTxn) error {
	return s.db.inTx(ctx, func(tx pgx.Tx) error {
		if err := fence(ctx, tx, l); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM federation_txn_items WHERE destination = $1`, l.Destination); err != nil {
			return fmt.Errorf("replacing transaction items for %s: %w", l.Destination, err)
		}
		if t == nil {
			tag, err := tx.Exec(ctx, `DELETE FROM federation_txns WHERE destination = $1 AND txn_id = $2`, l.Destination, txnID)
			if err != nil {
				return fmt.Errorf("removing stored transaction for %s: %w", l.Destination, err)
			}
			if tag.RowsAffected() == 0 {
				return federation.ErrNoTxn
			}
			return nil
		}
		// An update in place keeps created_at: the TTL counts from the
		// first store, however often the transaction is split.
		tag, err := tx.Exec(ctx, `
			UPDATE federation_txns SET txn_id = $3, edus = $4, origin_server_ts = $5,
				attempts = 0, last_status = 0, same_status = 0
			WHERE destination = $1 AND txn_id = $2`,
			l.Destination, txnID, t.ID, []byte(t.EDUs), t.OriginServerTS)
		if err != nil {
			return fmt.Errorf("replacing stored transaction for %s: %w", l.Destination, err)
		}
		if tag.RowsAffected() == 0 {
			return federation.ErrNoTxn
		}
		sources := make([]string, len(t.Items))
		positions := make([]int64, len(t.Items))
		for i, it := range t.Items {
			sources[i], positions[i] = it.Source, it.Pos
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO federation_txn_items (destination, source, pos)
			SELECT $1, s, p FROM unnest($2::text[], $3::bigint[]) AS i(s, p)`,
			l.Destination, sources, positions); err != nil {
			return fmt.Errorf("storing transaction items for %s: %w", l.Destination, err)
		}
		return nil
	})
}

func (s *federationStore) CompleteTxn(ctx context.Context, l federation.Lease, txnID string) (int, error) {
	return s.finishTxn(ctx, l, txnID, true)
}

func (s *federationStore) DropTxn(ctx context.Context, l federation.Lease, txnID string) (int, error) {
	return s.finishTxn(ctx, l, txnID, false)
}

// finishTxn deletes a stored transaction and exactly the outbox rows it
// covers, fenced, in one transaction; succeeded also ends the backoff.
func (s *federationStore) finishTxn(ctx context.Context, l federation.Lease, txnID string, succeeded bool) (int, error) {
	var deleted int
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		deleted = 0
		if succeeded {
			tag, err := tx.Exec(ctx, `
				UPDATE federation_destinations SET failures = 0, retry_at = NULL
				WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`,
				l.Destination, l.Holder, l.Generation)
			if err != nil {
				return fmt.Errorf("resetting backoff of %s: %w", l.Destination, err)
			}
			if tag.RowsAffected() == 0 {
				return federation.ErrLeaseLost
			}
		} else if err := fence(ctx, tx, l); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT source, pos FROM federation_txn_items WHERE destination = $1`, l.Destination)
		if err != nil {
			return fmt.Errorf("reading transaction items for %s: %w", l.Destination, err)
		}
		bySource := map[string][]int64{}
		var src string
		var pos int64
		_, err = pgx.ForEachRow(rows, []any{&src, &pos}, func() error {
			bySource[src] = append(bySource[src], pos)
			return nil
		})
		if err != nil {
			return fmt.Errorf("reading transaction items for %s: %w", l.Destination, err)
		}
		tag, err := tx.Exec(ctx, `DELETE FROM federation_txns WHERE destination = $1 AND txn_id = $2`, l.Destination, txnID)
		if err != nil {
			return fmt.Errorf("deleting stored transaction for %s: %w", l.Destination, err)
		}
		if tag.RowsAffected() == 0 {
			return federation.ErrNoTxn
		}
		for source, positions := range bySource {
			switch source {
			case inbox.OutboxSource:
				n, err := deleteOutboxRows(ctx, tx, l.Destination, positions)
				if err != nil {
					return err
				}
				deleted += n
			case devicelists.OutboxSource:
				n, err := deleteDeviceListOutboxRows(ctx, tx, l.Destination, positions)
				if err != nil {
					return err
				}
				for _, c := range n {
					deleted += c
				}
			default:
				return fmt.Errorf("stored transaction for %s covers rows of unknown EDU source %q", l.Destination, source)
			}
		}
		return nil
	})
	return deleted, err
}

func (s *federationStore) RecordFailure(ctx context.Context, l federation.Lease, f federation.FailedAttempt) (int, error) {
	var same int
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE federation_destinations SET failures = failures + 1, retry_at = now() + $4 * interval '1 microsecond'
			WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`,
			l.Destination, l.Holder, l.Generation, micros(f.Wait))
		if err != nil {
			return fmt.Errorf("recording failure for %s: %w", l.Destination, err)
		}
		if tag.RowsAffected() == 0 {
			return federation.ErrLeaseLost
		}
		err = tx.QueryRow(ctx, `
			UPDATE federation_txns SET
				attempts = attempts + 1,
				same_status = CASE WHEN $3 = 0 THEN 0 WHEN last_status = $3 THEN same_status + 1 ELSE 1 END,
				last_status = $3
			WHERE destination = $1 AND txn_id = $2
			RETURNING same_status`, l.Destination, f.TxnID, f.Status).Scan(&same)
		if errors.Is(err, pgx.ErrNoRows) {
			return federation.ErrNoTxn
		}
		if err != nil {
			return fmt.Errorf("recording failure for %s: %w", l.Destination, err)
		}
		return nil
	})
	return same, err
}

func (s *federationStore) TxnDestinations(ctx context.Context) ([]string, error) {
	rows, err := s.db.pool.Query(ctx, `SELECT destination FROM federation_txns ORDER BY destination`)
	if err != nil {
		return nil, fmt.Errorf("listing stored transactions: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (s *federationStore) BackingOff(ctx context.Context) (int, error) {
	var n int
	err := s.db.pool.QueryRow(ctx, `SELECT count(*) FROM federation_destinations WHERE retry_at > now()`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("counting destinations backing off: %w", err)
	}
	return n, nil
}

func (s *federationStore) InboundTxn(ctx context.Context, origin, txnID string) ([]byte, bool, error) {
	var resp []byte
	err := s.db.pool.QueryRow(ctx, `SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2`,
		origin, txnID).Scan(&resp)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("looking up inbound transaction: %w", err)
	}
	return resp, true, nil
}

func (s *federationStore) RecordInboundTxn(ctx context.Context, origin, txnID string, response []byte) error {
	_, err := s.db.pool.Exec(ctx, `
		INSERT INTO federation_inbound_txns (origin, txn_id, response) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, origin, txnID, response)
	if err != nil {
		return fmt.Errorf("recording inbound transaction: %w", err)
	}
	return nil
}

func (s *federationStore) PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	tag, err := s.db.pool.Exec(ctx, `
		DELETE FROM federation_inbound_txns WHERE ctid = ANY (ARRAY (
			SELECT ctid FROM federation_inbound_txns WHERE received_at < $1 LIMIT $2))`, cutoff, limit)
	if err != nil {
		return 0, fmt.Errorf("pruning inbound transactions: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
