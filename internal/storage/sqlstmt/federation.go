package sqlstmt

import (
	"context"

	"github.com/todeviced/todeviced/internal/federation"
)

// FedQueries is the federation.Queries statements the dialects share, on
// a Conn. A backend embeds it and adds the statements of lease times and
// pruning, which its dialect writes its own way.
type FedQueries struct{ C Conn }

var (
	releaseLease = New(`
		UPDATE federation_destinations SET lease_holder = NULL, lease_until = NULL
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`)
	resetBackoff = New(`
		UPDATE federation_destinations SET failures = 0, retry_at = NULL
		WHERE destination = $1 AND lease_holder = $2 AND lease_generation = $3`)
	countAttempt = New(`
		UPDATE federation_txns SET
			attempts = attempts + 1,
			same_status = CASE WHEN $3 = 0 THEN 0 WHEN last_status = $3 THEN same_status + 1 ELSE 1 END,
			last_status = $3
		WHERE destination = $1 AND txn_id = $2
		RETURNING same_status`)
	txnItems = New(`
		SELECT source, pos FROM federation_txn_items WHERE destination = $1 ORDER BY source, pos`)
	insertTxn = New(`
		INSERT INTO federation_txns (destination, txn_id, edus, origin_server_ts, created_at)
		VALUES ($1, $2, $3, $4, {now}) ON CONFLICT DO NOTHING`)
	updateTxn = New(`
		UPDATE federation_txns SET txn_id = $3, edus = $4, origin_server_ts = $5,
			attempts = 0, last_status = 0, same_status = 0
		WHERE destination = $1 AND txn_id = $2`)
	deleteTxn        = New(`DELETE FROM federation_txns WHERE destination = $1 AND txn_id = $2`)
	deleteTxnItems   = New(`DELETE FROM federation_txn_items WHERE destination = $1`)
	txnDestinations  = New(`SELECT destination FROM federation_txns ORDER BY destination`)
	inboundTxn       = New(`SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2`)
	recordInboundTxn = New(`
		INSERT INTO federation_inbound_txns (origin, txn_id, response, received_at) VALUES ($1, $2, $3, {now})
		ON CONFLICT DO NOTHING`)
)

// ScanFound scans a row that may not exist.
func ScanFound(row Row, dest ...any) (bool, error) {
	err := row.Scan(dest...)
	if IsNoRows(err) {
		return false, nil
	}
	return err == nil, err
}

// Changed is whether a statement changed a row.
func Changed(n int64, err error) (bool, error) { return err == nil && n > 0, err }

func (q FedQueries) ReleaseLease(ctx context.Context, l federation.Lease) error {
	_, err := q.C.Exec(ctx, releaseLease, l.Destination, l.Holder, l.Generation)
	return err
}

func (q FedQueries) ResetBackoff(ctx context.Context, l federation.Lease) (bool, error) {
	return Changed(q.C.Exec(ctx, resetBackoff, l.Destination, l.Holder, l.Generation))
}

func (q FedQueries) CountAttempt(ctx context.Context, destination, txnID string, status int) (int, bool, error) {
	var same int
	found, err := ScanFound(q.C.QueryRow(ctx, countAttempt, destination, txnID, status), &same)
	return same, found, err
}

func (q FedQueries) TxnItems(ctx context.Context, destination string) ([]federation.TxnItem, error) {
	return Collect(ctx, q.C, txnItems, []any{destination}, func(r Rows) (it federation.TxnItem, err error) {
		return it, r.Scan(&it.Source, &it.Pos)
	})
}

func (q FedQueries) InsertTxn(ctx context.Context, destination string, t *federation.StoredTxn) (bool, error) {
	return Changed(q.C.Exec(ctx, insertTxn, destination, t.ID, []byte(t.EDUs), t.OriginServerTS))
}

func (q FedQueries) UpdateTxn(ctx context.Context, destination, txnID string, t *federation.StoredTxn) (bool, error) {
	return Changed(q.C.Exec(ctx, updateTxn, destination, txnID, t.ID, []byte(t.EDUs), t.OriginServerTS))
}

func (q FedQueries) DeleteTxn(ctx context.Context, destination, txnID string) (bool, error) {
	return Changed(q.C.Exec(ctx, deleteTxn, destination, txnID))
}

func (q FedQueries) DeleteTxnItems(ctx context.Context, destination string) error {
	_, err := q.C.Exec(ctx, deleteTxnItems, destination)
	return err
}

func (q FedQueries) TxnDestinations(ctx context.Context) ([]string, error) {
	return Strings(ctx, q.C, txnDestinations)
}

func (q FedQueries) InboundTxn(ctx context.Context, origin, txnID string) ([]byte, bool, error) {
	var resp []byte
	found, err := ScanFound(q.C.QueryRow(ctx, inboundTxn, origin, txnID), &resp)
	return resp, found, err
}

func (q FedQueries) RecordInboundTxn(ctx context.Context, origin, txnID string, response []byte) error {
	_, err := q.C.Exec(ctx, recordInboundTxn, origin, txnID, response)
	return err
}
