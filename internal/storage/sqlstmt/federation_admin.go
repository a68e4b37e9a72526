package sqlstmt

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/federation"
)

// The admin API's statements of the federation store, both dialects.
var (
	adminDestinations = New(`
		SELECT x.destination,
			(SELECT count(*) FROM todevice_outbox o WHERE o.destination = x.destination),
			(SELECT count(*) FROM device_list_outbox o WHERE o.destination = x.destination),
			(SELECT min(enqueued_at) FROM todevice_outbox o WHERE o.destination = x.destination),
			(SELECT min(enqueued_at) FROM device_list_outbox o WHERE o.destination = x.destination),
			coalesce(d.failures, 0), d.retry_at, coalesce(d.lease_holder, ''), d.lease_until,
			coalesce(t.txn_id, ''), coalesce(t.attempts, 0), coalesce(t.last_status, 0)
		FROM (SELECT destination FROM federation_destinations
			UNION SELECT destination FROM todevice_outbox_destinations
			UNION SELECT destination FROM device_list_outbox) x
		LEFT JOIN federation_destinations d ON d.destination = x.destination
		LEFT JOIN federation_txns t ON t.destination = x.destination`)
	adminResetBackoff = New(`
		UPDATE federation_destinations SET failures = 0, retry_at = NULL WHERE destination = $1`)
	adminFenceLease = New(`
		UPDATE federation_destinations SET lease_holder = NULL, lease_until = NULL,
			lease_generation = lease_generation + 1
		WHERE destination = $1`)
	adminDropTxnItems    = New(`DELETE FROM federation_txn_items WHERE destination = $1`)
	adminDropTxn         = New(`DELETE FROM federation_txns WHERE destination = $1`)
	adminDropToDevice    = New(`DELETE FROM todevice_outbox WHERE destination = $1`)
	adminDropDeviceListQ = New(`DELETE FROM device_list_outbox WHERE destination = $1`)
)

// AdminDestinations reads every destination and sorts in Go: the list is
// as long as the servers this one talks to, and the two outboxes' counts
// add up only here.
func (q FedQueries) AdminDestinations(ctx context.Context, limit int) ([]federation.DestinationState, error) {
	out, err := Collect(ctx, q.C, adminDestinations, nil, func(r Rows) (d federation.DestinationState, err error) {
		var toDevice, lists int64
		var oldest1, oldest2 *time.Time
		err = r.Scan(&d.Destination, &toDevice, &lists, &oldest1, &oldest2, &d.Failures, &d.RetryAt, &d.LeaseHolder, &d.LeaseUntil,
			&d.TxnID, &d.TxnAttempts, &d.LastStatus)
		d.Queued = toDevice + lists
		d.Oldest = oldest1
		if oldest2 != nil && (oldest1 == nil || oldest2.Before(*oldest1)) {
			d.Oldest = oldest2
		}
		return d, err
	})
	if err != nil {
		return nil, err
	}
	sortDestinations(out)
	return out[:min(len(out), limit)], nil
}

func (q FedQueries) AdminResetBackoff(ctx context.Context, destination string) (bool, error) {
	return Changed(q.C.Exec(ctx, adminResetBackoff, destination))
}

func (q FedQueries) AdminFenceLease(ctx context.Context, destination string) error {
	_, err := q.C.Exec(ctx, adminFenceLease, destination)
	return err
}

func (q FedQueries) AdminDropQueue(ctx context.Context, destination string) (int, error) {
	if err := q.C.ExecAll(ctx, []*Stmt{adminDropTxnItems, adminDropTxn}, destination); err != nil {
		return 0, err
	}
	n1, err := q.C.Exec(ctx, adminDropToDevice, destination)
	if err != nil {
		return 0, err
	}
	n2, err := q.C.Exec(ctx, adminDropDeviceListQ, destination)
	return int(n1 + n2), err
}

// sortDestinations orders the largest queue first, then by name.
func sortDestinations(ds []federation.DestinationState) {
	slices.SortFunc(ds, func(a, b federation.DestinationState) int {
		if c := cmp.Compare(b.Queued, a.Queued); c != 0 {
			return c
		}
		return strings.Compare(a.Destination, b.Destination)
	})
}
