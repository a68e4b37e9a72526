package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
)

// federationStore implements federation.Store. The lease logic is the
// PostgreSQL backend's: there is one process, but the sender does not know
// that, and the same fencing keeps a stale holder (a goroutine that lost its
// lease) from writing. The database clock is this process's clock, read
// with the writer's turn held; every write runs on the writer connection,
// so a fence check and the writes it guards are never interleaved with
// another holder's.
type federationStore struct{ db *DB }

// Federation returns the federation store.
func (db *DB) Federation() federation.Store { return &federationStore{db: db} }

func usDuration(us int64) time.Duration {
	if us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}

func (s *federationStore) AcquireLease(ctx context.Context, destination, holder string, ttl time.Duration) (federation.Acquisition, error) {
	a := federation.Acquisition{Lease: federation.Lease{Destination: destination, Holder: holder}}
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		now := micros(time.Now())
		var cur sql.NullString
		var until, retry sql.NullInt64
		var gen int64
		err := tx.QueryRowContext(ctx, `
			SELECT lease_holder, lease_until, retry_at, lease_generation, failures
			FROM federation_destinations WHERE destination = ?`, destination).
			Scan(&cur, &until, &retry, &gen, &a.Failures)
		if errors.Is(err, sql.ErrNoRows) {
			a.Acquired, a.Lease.Generation, a.Failures = true, 1, 0
			_, err := tx.ExecContext(ctx, `
				INSERT INTO federation_destinations (destination, lease_holder, lease_generation, lease_until)
				VALUES (?, ?, 1, ?)`, destination, holder, now+ttl.Microseconds())
			return err
		}
		if err != nil {
			return err
		}
		var leaseWait, retryWait int64
		if cur.Valid && until.Valid {
			leaseWait = until.Int64 - now
		}
		if retry.Valid {
			retryWait = retry.Int64 - now
		}
		if leaseWait > 0 || retryWait > 0 {
			a.Wait = max(usDuration(leaseWait), usDuration(retryWait))
			a.BackingOff = retryWait > 0
			return nil
		}
		a.Acquired, a.Lease.Generation = true, gen+1
		_, err = tx.ExecContext(ctx, `
			UPDATE federation_destinations SET lease_holder = ?, lease_generation = ?, lease_until = ?
			WHERE destination = ?`, holder, gen+1, now+ttl.Microseconds(), destination)
		return err
	})
	if err != nil {
		return federation.Acquisition{Lease: a.Lease}, fmt.Errorf("acquiring lease of %s: %w", destination, err)
	}
	return a, nil
}

func (s *federationStore) RenewLease(ctx context.Context, l federation.Lease, ttl time.Duration) error {
	return s.db.write(ctx, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, `
			UPDATE federation_destinations SET lease_until = ?
			WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
			micros(time.Now())+ttl.Microseconds(), l.Destination, l.Holder, l.Generation)
		if err != nil {
			return fmt.Errorf("renewing lease of %s: %w", l.Destination, err)
		}
		return affectedOrLost(r)
	})
}

func (s *federationStore) ReleaseLease(ctx context.Context, l federation.Lease) error {
	return s.db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			UPDATE federation_destinations SET lease_holder = NULL, lease_until = NULL
			WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
			l.Destination, l.Holder, l.Generation)
		if err != nil {
			return fmt.Errorf("releasing lease of %s: %w", l.Destination, err)
		}
		return nil
	})
}

// affectedOrLost turns an UPDATE guarded by the lease into ErrLeaseLost when
// it matched nothing.
func affectedOrLost(r sql.Result) error {
	n, err := r.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return federation.ErrLeaseLost
	}
	return nil
}

// fence checks, inside a write transaction, that l still holds the lease.
func fence(ctx context.Context, tx *sql.Tx, l federation.Lease) error {
	var one int
	err := tx.QueryRowContext(ctx, `
		SELECT 1 FROM federation_destinations
		WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
		l.Destination, l.Holder, l.Generation).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return federation.ErrLeaseLost
	}
	if err != nil {
		return fmt.Errorf("checking lease of %s: %w", l.Destination, err)
	}
	return nil
}

func (s *federationStore) StoredTxn(ctx context.Context, destination string) (*federation.StoredTxn, error) {
	var t *federation.StoredTxn
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		st := &federation.StoredTxn{Destination: destination}
		var edus []byte
		var created int64
		err := tx.QueryRowContext(ctx, `
			SELECT txn_id, edus, origin_server_ts, created_at, attempts, last_status, same_status
			FROM federation_txns WHERE destination = ?`, destination).
			Scan(&st.ID, &edus, &st.OriginServerTS, &created, &st.Attempts, &st.LastStatus, &st.SameStatus)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		st.EDUs, st.Age = edus, usDuration(micros(time.Now())-created)
		rows, err := tx.QueryContext(ctx, `
			SELECT source, pos FROM federation_txn_items WHERE destination = ? ORDER BY source, pos`, destination)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var it federation.TxnItem
			if err := rows.Scan(&it.Source, &it.Pos); err != nil {
				return err
			}
			st.Items = append(st.Items, it)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		t = st
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored transaction for %s: %w", destination, err)
	}
	return t, nil
}

func (s *federationStore) SaveTxn(ctx context.Context, l federation.Lease, t *federation.StoredTxn) error {
	return s.db.write(ctx, func(tx *sql.Tx) error {
		if err := fence(ctx, tx, l); err != nil {
			return err
		}
		r, err := tx.ExecContext(ctx, `
			INSERT INTO federation_txns (destination, txn_id, edus, origin_server_ts, created_at)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			l.Destination, t.ID, []byte(t.EDUs), t.OriginServerTS, micros(time.Now()))
		if err != nil {
			return fmt.Errorf("storing transaction for %s: %w", l.Destination, err)
		}
		if n, err := r.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return federation.ErrTxnExists
		}
		for chunk := range slices.Chunk(t.Items, maxRowsPerStatement) {
			args := make([]any, 0, 3*len(chunk))
			for _, it := range chunk {
				args = append(args, l.Destination, it.Source, it.Pos)
			}
			if _, err := tx.ExecContext(ctx, `
				INSERT INTO federation_txn_items (destination, source, pos) VALUES `+placeholders(len(chunk), 3), args...); err != nil {
				return fmt.Errorf("storing transaction items for %s: %w", l.Destination, err)
			}
		}
		return nil
	})
}

func (s *federationStore) ReplaceTxn(ctx context.Context, l federation.Lease, txnID string, t *federation.StoredTxn) error {
	return s.db.write(ctx, func(tx *sql.Tx) error {
		if err := fence(ctx, tx, l); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM federation_txn_items WHERE destination = ?`, l.Destination); err != nil {
			return fmt.Errorf("replacing transaction items for %s: %w", l.Destination, err)
		}
		var r sql.Result
		var err error
		if t == nil {
			r, err = tx.ExecContext(ctx, `DELETE FROM federation_txns WHERE destination = ? AND txn_id = ?`, l.Destination, txnID)
		} else {
			// An update in place keeps created_at: the TTL counts from
			// the first store, however often the transaction is split.
			r, err = tx.ExecContext(ctx, `
				UPDATE federation_txns SET txn_id = ?, edus = ?, origin_server_ts = ?,
					attempts = 0, last_status = 0, same_status = 0
				WHERE destination = ? AND txn_id = ?`,
				t.ID, []byte(t.EDUs), t.OriginServerTS, l.Destination, txnID)
		}
		if err != nil {
			return fmt.Errorf("replacing stored transaction for %s: %w", l.Destination, err)
		}
		if n, err := r.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return federation.ErrNoTxn
		}
		if t == nil {
			return nil
		}
		for chunk := range slices.Chunk(t.Items, maxRowsPerStatement) {
			args := make([]any, 0, 3*len(chunk))
			for _, it := range chunk {
				args = append(args, l.Destination, it.Source, it.Pos)
			}
			if _, err := tx.ExecContext(ctx, `
				INSERT INTO federation_txn_items (destination, source, pos) VALUES `+placeholders(len(chunk), 3), args...); err != nil {
				return fmt.Errorf("storing transaction items for %s: %w", l.Destination, err)
			}
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
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		deleted = 0
		if succeeded {
			r, err := tx.ExecContext(ctx, `
				UPDATE federation_destinations SET failures = 0, retry_at = NULL
				WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
				l.Destination, l.Holder, l.Generation)
			if err != nil {
				return fmt.Errorf("resetting backoff of %s: %w", l.Destination, err)
			}
			if err := affectedOrLost(r); err != nil {
				return err
			}
		} else if err := fence(ctx, tx, l); err != nil {
			return err
		}
		bySource := map[string][]int64{}
		rows, err := tx.QueryContext(ctx, `SELECT source, pos FROM federation_txn_items WHERE destination = ?`, l.Destination)
		if err != nil {
			return fmt.Errorf("reading transaction items for %s: %w", l.Destination, err)
		}
		for rows.Next() {
			var src string
			var pos int64
			if err := rows.Scan(&src, &pos); err != nil {
				rows.Close()
				return err
			}
			bySource[src] = append(bySource[src], pos)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		r, err := tx.ExecContext(ctx, `DELETE FROM federation_txns WHERE destination = ? AND txn_id = ?`, l.Destination, txnID)
		if err != nil {
			return fmt.Errorf("deleting stored transaction for %s: %w", l.Destination, err)
		}
		if n, err := r.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
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
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, `
			UPDATE federation_destinations SET failures = failures + 1, retry_at = ?
			WHERE destination = ? AND lease_holder = ? AND lease_generation = ?`,
			micros(time.Now())+f.Wait.Microseconds(), l.Destination, l.Holder, l.Generation)
		if err != nil {
			return fmt.Errorf("recording failure for %s: %w", l.Destination, err)
		}
		if err := affectedOrLost(r); err != nil {
			return err
		}
		err = tx.QueryRowContext(ctx, `
			UPDATE federation_txns SET
				attempts = attempts + 1,
				same_status = CASE WHEN ?1 = 0 THEN 0 WHEN last_status = ?1 THEN same_status + 1 ELSE 1 END,
				last_status = ?1
			WHERE destination = ?2 AND txn_id = ?3
			RETURNING same_status`, f.Status, l.Destination, f.TxnID).Scan(&same)
		if errors.Is(err, sql.ErrNoRows) {
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
	rows, err := s.db.readers.QueryContext(ctx, `SELECT destination FROM federation_txns ORDER BY destination`)
	if err != nil {
		return nil, fmt.Errorf("listing stored transactions: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("listing stored transactions: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *federationStore) BackingOff(ctx context.Context) (int, error) {
	var n int
	err := s.db.readers.QueryRowContext(ctx, `SELECT count(*) FROM federation_destinations WHERE retry_at > ?`,
		micros(time.Now())).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("counting destinations backing off: %w", err)
	}
	return n, nil
}

func (s *federationStore) InboundTxn(ctx context.Context, origin, txnID string) ([]byte, bool, error) {
	var resp []byte
	err := s.db.readers.QueryRowContext(ctx, `SELECT response FROM federation_inbound_txns WHERE origin = ? AND txn_id = ?`,
		origin, txnID).Scan(&resp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("looking up inbound transaction: %w", err)
	}
	return resp, true, nil
}

func (s *federationStore) RecordInboundTxn(ctx context.Context, origin, txnID string, response []byte) error {
	return s.db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			INSERT INTO federation_inbound_txns (origin, txn_id, response, received_at) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, origin, txnID, response, micros(time.Now()))
		if err != nil {
			return fmt.Errorf("recording inbound transaction: %w", err)
		}
		return nil
	})
}

func (s *federationStore) PruneInboundTxns(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int64
	err := s.db.write(ctx, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, `
			DELETE FROM federation_inbound_txns WHERE rowid IN (
				SELECT rowid FROM federation_inbound_txns WHERE received_at < ? LIMIT ?)`, micros(cutoff), limit)
		if err != nil {
			return err
		}
		n, err = r.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("pruning inbound transactions: %w", err)
	}
	return int(n), nil
}
