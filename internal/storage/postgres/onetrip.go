package postgres

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// One round trip: the common send — messages to named devices of local
// users, no MSC3944 rule, no remote recipient, fewer rows than COPY is for —
// is written, alone or in a group, by one statement (oneTripSQL), which is
// its own transaction: it checks each send's token guard, records the
// transactions, locks the recipient devices in nid order and inserts the
// rows. The locks are then held only while PostgreSQL runs that statement
// and flushes its commit, not while todeviced reads the locked devices and
// builds a second round trip, as the general path (acceptGroup, accept)
// does: sends to the same devices commit one after another on those locks,
// so the time a send holds them is what bounds how fast they go
// (docs/PERFORMANCE.md, "One round trip per send").
//
// What the statement does, in order, is what the general path does, and it
// takes its locks in the same order (transaction records, then devices), so
// the two paths, on any replica, cannot deadlock each other. The NOTIFY that
// wakes other replicas follows the commit, from a goroutine of its own
// (notifier), as the general path's follows its COMMIT.

// oneTripSQL writes a group of sends in one statement. Parameters: the
// transaction records, each key once, in key order ($1–$5), each with its
// guard ($6, $7; NID 0 is none) and the index of its send in the group
// ($8); the messages of those sends in arrival order: send index ($9),
// recipient user and device ($10, $11), content ($12); the sender and event
// type of each send, by index + 1 ($13, $14).
//
// Its rows: (0, send) for each transaction recorded, (1, send) for each
// whose guard failed, (2, send, n) for the rows written for a send, (3, 0,
// nid) for each device written to.
//
// Every CTE is materialized: each is then evaluated once, as its own step,
// in the order the ones after it read it (k, ins, rec, m, w); the rows'
// INSERT runs last, to completion, as every data-modifying CTE does. w is
// each message of a recorded send joined to its live device, the devices
// locked as the rows leave the sort, in nid order; a device deleted while
// w waited for its lock drops out when PostgreSQL re-checks the locked
// row, so nothing is written for it (invariant 9), and the INSERT writes
// exactly what w locked. (Locking the devices first and joining the
// messages to them afterwards made PostgreSQL compare every message with
// every device: half the statement's time at fan-out 20.) The inbox
// positions follow the INSERT's ORDER BY: message order, which is arrival
// order, within a send the order of its messages.
var oneTripSQL = `
	WITH k AS MATERIALIZED (
		SELECT u, d, e, t, r, s, n, ` + guardSQL + ` AS ok
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::bytea[], $8::int[])
			WITH ORDINALITY AS k(u, d, e, t, r, g, h, s, n)),
	ins AS (
		INSERT INTO send_txns (user_id, device_id, event_type, txn_id, response)
		SELECT u, d, e, t, r FROM k WHERE ok ORDER BY n
		ON CONFLICT DO NOTHING
		RETURNING user_id, device_id, event_type, txn_id),
	rec AS MATERIALIZED (
		SELECT k.s FROM k JOIN ins
			ON ins.user_id = k.u AND ins.device_id = k.d AND ins.event_type = k.e AND ins.txn_id = k.t),
	m AS MATERIALIZED (
		SELECT s, u, d, c, n FROM unnest($9::int[], $10::text[], $11::text[], $12::bytea[])
			WITH ORDINALITY AS m(s, u, d, c, n)
		WHERE s IN (SELECT s FROM rec)),
	w AS MATERIALIZED (
		SELECT m.s, m.n, d.nid, d.user_id, m.c
		FROM m JOIN devices d ON d.user_id = m.u AND d.device_id = m.d
		WHERE d.deleted_at IS NULL
		ORDER BY d.nid
		FOR NO KEY UPDATE OF d),
	rows AS (
		INSERT INTO device_inbox (user_id, device_nid, sender, type, content)
		SELECT user_id, nid, ($13::text[])[s + 1], ($14::text[])[s + 1], c FROM w ORDER BY n)
	SELECT 0, s, 0::bigint FROM rec
	UNION ALL SELECT 1, s, 0 FROM k WHERE NOT ok
	UNION ALL SELECT 2, s, count(*) FROM w GROUP BY s
	UNION ALL SELECT DISTINCT 3, 0, nid FROM w`

// guardSQL is each send's guard in oneTripSQL.
var guardSQL = senderGuardSQL("g", "h")

// oneTrip reports whether a group can be written by oneTripSQL.
func (s *inboxStore) oneTrip(group []*queuedAccept) bool {
	if s.db.opts.InboxWrite == WriteCopy {
		return false
	}
	rows := 0
	for _, q := range group {
		if len(q.a.Remote) > 0 || q.a.Stale {
			return false
		}
		for _, m := range q.a.Local {
			if m.DeviceID == inbox.AllDevices {
				return false
			}
		}
		rows += len(q.a.Local)
	}
	return rows < CopyThreshold
}

// acceptOneTrip writes a group with oneTripSQL: one round trip, plus one to
// read the recorded answers of retries of transactions recorded before.
func (s *inboxStore) acceptOneTrip(ctx context.Context, group []*queuedAccept) (results []inbox.AcceptResult, keys []wakeup.Key, refused []bool, err error) {
	results = make([]inbox.AcceptResult, len(group))
	refused = make([]bool, len(group))
	firstOf := make(map[inbox.TxnKey]int, len(group))
	var order []int
	for i, q := range group {
		if _, seen := firstOf[q.a.Txn]; !seen {
			firstOf[q.a.Txn] = i
			order = append(order, i)
		}
	}
	// Keys in key order, so two groups holding the same keys cannot
	// deadlock on the unique index.
	slices.SortFunc(order, func(x, y int) int { return compareTxn(group[x].a.Txn, group[y].a.Txn) })
	var tk txnKeys
	tr := make([][]byte, 0, len(order))
	gNIDs := make([]int64, 0, len(order))
	gHashes := make([][]byte, 0, len(order))
	sends := make([]int32, 0, len(order))
	for _, i := range order {
		a := group[i].a
		tk.add(a.Txn)
		tr = append(tr, a.Response)
		nid, hash := guardArgs(a.Guard)
		gNIDs = append(gNIDs, nid)
		gHashes = append(gHashes, hash)
		sends = append(sends, int32(i))
	}
	var ms []int32
	var mUsers, mDevices []string
	var mContents [][]byte
	senders := make([]string, len(group))
	types := make([]string, len(group))
	for i, q := range group {
		senders[i], types[i] = q.a.Sender, q.a.EventType
		if firstOf[q.a.Txn] != i {
			continue // a retry in the same group writes nothing
		}
		for _, m := range q.a.Local {
			ms = append(ms, int32(i))
			mUsers = append(mUsers, m.UserID)
			mDevices = append(mDevices, m.DeviceID)
			mContents = append(mContents, m.Content)
		}
	}
	if hook := s.db.opts.BeforeGroupCommit; hook != nil && len(group) > 1 {
		if err := hook(ctx, len(group)); err != nil {
			return nil, nil, nil, err
		}
	}

	rows, err := s.db.pool.Query(ctx, oneTripSQL, tk.users, tk.devices, tk.types, tk.ids, tr, gNIDs, gHashes, sends,
		ms, mUsers, mDevices, mContents, senders, types)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("writing sendToDevice transactions: %w", err)
	}
	recorded := make([]bool, len(group))
	revoked := make([]bool, len(group))
	var kind, send int32
	var n int64
	for rows.Next() {
		if err := rows.Scan(&kind, &send, &n); err != nil {
			rows.Close()
			return nil, nil, nil, fmt.Errorf("writing sendToDevice transactions: %w", err)
		}
		switch kind {
		case 0:
			recorded[send] = true
		case 1:
			revoked[send] = true
		case 2:
			results[send].Delivered = int(n)
		case 3:
			keys = append(keys, wakeup.DeviceKey(n))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("writing sendToDevice transactions: %w", err)
	}

	// Committed. Each send ends as its transaction's first send did.
	var lookup txnKeys
	for i, q := range group {
		first := firstOf[q.a.Txn]
		switch {
		case revoked[first]:
			refused[i] = true
		case first == i && recorded[i]:
			results[i].Response = q.a.Response
			results[i].Unknown = len(q.a.Local) - results[i].Delivered
		case recorded[first]:
			results[i] = inbox.AcceptResult{Duplicate: true, Response: group[first].a.Response}
		default:
			results[i] = inbox.AcceptResult{Duplicate: true}
			lookup.add(q.a.Txn)
		}
	}
	if len(lookup.ids) > 0 {
		if err := s.readRecorded(ctx, lookup, group, results); err != nil {
			return nil, nil, nil, err
		}
	}
	return results, keys, refused, nil
}

// readRecorded fills in the answers of retries of transactions recorded
// before (Duplicate results without a Response), after the commit: those
// records are committed, and never change.
func (s *inboxStore) readRecorded(ctx context.Context, lookup txnKeys, group []*queuedAccept, results []inbox.AcceptResult) error {
	b := &pgx.Batch{}
	b.Queue(readRecordedSQL, lookup.users, lookup.devices, lookup.types, lookup.ids)
	br := s.db.pool.SendBatch(ctx, b)
	if err := fillRecorded(br, group, results); err != nil {
		br.Close()
		return err
	}
	return br.Close()
}
