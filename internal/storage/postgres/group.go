package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Group accept: sends that arrive while another is being written wait and
// are then written together, in one transaction — one set of device locks,
// one WAL flush — instead of one after another.
//
// Why: a send holds its recipients' device rows locked until its commit
// has reached the disk (that is what keeps invariant 3), so sends to the
// same devices commit strictly one after another, each paying a WAL flush
// of its own. A group pays one for all of them. A send that finds fewer than
// groupWriters groups being written is written at once, alone, exactly as
// before; grouping only ever happens under load, and then costs no more than
// the wait it replaces.
//
// Within a group, each send's rows are written in arrival order and its
// transaction record, recipients and outbox EDUs are handled as a lone send
// would handle them; the group as a whole locks the union of the devices in
// nid order and the destinations in name order, as a lone send does, so
// groups and lone sends (of this or another replica) cannot deadlock. If a
// group fails for any reason but a deadlock, its sends are written again one
// by one, so one bad send cannot fail the others.

// Group bounds: a group stops taking sends at either.
//
// They and groupWriters are constants, not settings: no measurement has
// found a value that helps on some hardware (issue 14; docs/PERFORMANCE.md,
// "Group accept settings"). The bounds only cap a group's size when more
// than 64 sends queue at once (8 concurrent senders never fill one), and
// then keep a group's transaction, and the locks it holds, short; one, two
// or four writers, 16 or 256 sends, moved BenchmarkAcceptConcurrent less
// than the noise between its own repeated runs.
const (
	maxGroupSends = 64
	maxGroupRows  = 8000
)

// groupWriters is how many groups are written at once: one. Sends to the
// same devices commit one after another on the device locks whatever the
// number of writers, and a second writer only splits what queues while a
// group is written into two smaller groups, which then wait for each
// other's locks and pay a WAL flush each. One writer taking everything
// queued is faster end to end, where each sender waits for its answer
// before sending again: accept-only fan-out 4, 8 senders, 3 150–3 300
// sends/s with two writers against about 3 950 with one; fan-out 20,
// 1 870–2 020 against 2 200–2 370 (docs/PERFORMANCE.md, "One writer, and
// the token in the send's transaction"). Sends to disjoint devices lose
// nothing by it: they share the group's transaction and its flush instead
// of two flushes.
const groupWriters = 1

type acceptQueue struct {
	mu      sync.Mutex
	waiting []*queuedAccept
	leaders int // goroutines writing groups, at most groupWriters
}

type queuedAccept struct {
	ctx  context.Context
	a    *inbox.Accept
	res  inbox.AcceptResult
	err  error
	done chan struct{}
}

func (q *queuedAccept) finish(res inbox.AcceptResult, err error) {
	q.res, q.err = res, err
	close(q.done)
}

// take removes the next group from the queue; with nothing queued it
// returns nil and gives up the lead.
func (aq *acceptQueue) take() []*queuedAccept {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	var group []*queuedAccept
	rows := 0
	for len(aq.waiting) > 0 && len(group) < maxGroupSends {
		q := aq.waiting[0]
		n := len(q.a.Local) + len(q.a.Remote)
		if len(group) > 0 && rows+n > maxGroupRows {
			break
		}
		aq.waiting[0] = nil
		aq.waiting = aq.waiting[1:]
		if q.ctx.Err() != nil {
			// Its client is gone and nothing was written: skip it.
			q.finish(inbox.AcceptResult{}, q.ctx.Err())
			continue
		}
		group = append(group, q)
		rows += n
	}
	if len(group) == 0 {
		aq.leaders--
		aq.waiting = nil
	}
	return group
}

// handOff reports whether sends are still queued; if so the caller keeps
// the lead and must pass it on.
func (aq *acceptQueue) handOff() bool {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	if len(aq.waiting) == 0 {
		aq.leaders--
		return false
	}
	return true
}

// Accept stores a sendToDevice, alone or in a group (see above).
func (s *inboxStore) Accept(ctx context.Context, a *inbox.Accept) (inbox.AcceptResult, error) {
	if s.hooks.BeforeAcceptCommit != nil {
		// Tests that hold a send's transaction open get it to themselves.
		return s.acceptAlone(ctx, a)
	}
	q := &queuedAccept{ctx: ctx, a: a, done: make(chan struct{})}
	aq := &s.db.acceptQueue
	aq.mu.Lock()
	aq.waiting = append(aq.waiting, q)
	lead := aq.leaders < groupWriters
	if lead {
		aq.leaders++
	}
	aq.mu.Unlock()
	if lead {
		// The group's work must not end with this request: others ride in it.
		gctx := context.WithoutCancel(ctx)
		leading := true
		for leading && !isDone(q.done) {
			group := aq.take()
			if leading = group != nil; leading {
				s.writeGroupTimed(gctx, group)
			}
		}
		if leading && aq.handOff() {
			go func() {
				for group := aq.take(); group != nil; group = aq.take() {
					s.writeGroupTimed(gctx, group)
				}
			}()
		}
	}
	select {
	case <-q.done:
		return q.res, q.err
	case <-ctx.Done():
		// Abandoned while queued or being written: whatever the group does,
		// a retry with the same txnId gets the recorded answer.
		return inbox.AcceptResult{}, ctx.Err()
	}
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeGroupTimed is writeGroup with a deadline of its own
// (Options.CallTimeout): the leader writing it is a request, and a frozen
// database must not hold that request, nor the sends riding in the group,
// past --database-timeout.
func (s *inboxStore) writeGroupTimed(ctx context.Context, group []*queuedAccept) {
	if d := s.db.opts.CallTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	s.writeGroup(ctx, group)
}

// writeGroup writes a group and finishes each of its sends: in one
// transaction (acceptGroup), a group of one as a lone send (acceptAlone). A
// group that fails for any reason but a deadlock or a serialization failure
// is written again one send at a time.
func (s *inboxStore) writeGroup(ctx context.Context, group []*queuedAccept) {
	if len(group) == 1 {
		group[0].finish(s.acceptAlone(ctx, group[0].a))
		return
	}
	const attempts = 4
	for i := 0; ; i++ {
		results, keys, refused, err := s.acceptGroup(ctx, group)
		if err == nil {
			s.db.sendGroups.Add(1)
			s.db.groupedSends.Add(int64(len(group)))
			s.db.wakeLocal(keys)
			for j, q := range group {
				if refused != nil && refused[j] {
					q.finish(inbox.AcceptResult{}, inbox.ErrTokenRevoked)
					continue
				}
				q.finish(results[j], nil)
			}
			return
		}
		if !retryable(err) || i == attempts-1 {
			s.db.log.WarnContext(ctx, "group of sendToDevice transactions failed; writing them one by one", "err", err, "sends", len(group))
			for _, q := range group {
				q.finish(s.acceptAlone(ctx, q.a))
			}
			return
		}
		select {
		case <-time.After(time.Duration(rand.N(10*(i+1))+1) * time.Millisecond):
		case <-ctx.Done():
			for _, q := range group {
				q.finish(inbox.AcceptResult{}, ctx.Err())
			}
			return
		}
	}
}

// acceptGroup writes several sends in one transaction of two round trips
// (three with COPY), as accept writes one. refused, when not nil, marks the
// sends whose guard failed: nothing was written for them.
func (s *inboxStore) acceptGroup(ctx context.Context, group []*queuedAccept) (results []inbox.AcceptResult, keys []wakeup.Key, refused []bool, err error) {
	conn, err := s.acquire(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	defer conn.release(ctx)

	// The transaction records, each key once, inserted in key order so two
	// groups holding the same keys cannot deadlock on the unique index.
	results = make([]inbox.AcceptResult, len(group))
	firstOf := make(map[inbox.TxnKey]int, len(group))
	var order []int
	var local []inbox.LocalMessage
	for i, q := range group {
		if _, seen := firstOf[q.a.Txn]; seen {
			continue
		}
		firstOf[q.a.Txn] = i
		order = append(order, i)
		local = append(local, q.a.Local...)
	}
	slices.SortFunc(order, func(x, y int) int { return compareTxn(group[x].a.Txn, group[y].a.Txn) })
	var tk txnKeys
	var tr [][]byte
	var gNIDs []int64
	var gHashes [][]byte
	for _, i := range order {
		tk.add(group[i].a.Txn)
		tr = append(tr, group[i].a.Response)
		nid, hash := guardArgs(group[i].a.Guard)
		gNIDs = append(gNIDs, nid)
		gHashes = append(gHashes, hash)
	}

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	// One statement, one snapshot: each send's guard (inbox.SenderGuard) is
	// read once, the transactions whose guard holds are recorded, and the
	// rows say which were recorded (true) and whose guard failed (false).
	b.Queue(`
		WITH k AS MATERIALIZED (
			SELECT u, d, e, t, r, n, `+senderGuardSQL("g", "h")+` AS ok
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::bytea[])
				WITH ORDINALITY AS k(u, d, e, t, r, g, h, n)),
		ins AS (
			INSERT INTO send_txns (user_id, device_id, event_type, txn_id, response)
			SELECT u, d, e, t, r FROM k WHERE ok ORDER BY n
			ON CONFLICT DO NOTHING
			RETURNING user_id, device_id, event_type, txn_id)
		SELECT true, user_id, device_id, event_type, txn_id FROM ins
		UNION ALL
		SELECT false, u, d, e, t FROM k WHERE NOT ok`,
		tk.users, tk.devices, tk.types, tk.ids, tr, gNIDs, gHashes)
	if len(local) > 0 {
		queueLockDevices(b, local)
	}
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return nil, nil, nil, fmt.Errorf("beginning transaction: %w", err)
	}
	conn.open = true
	inserted := map[inbox.TxnKey]bool{}
	var revoked map[inbox.TxnKey]bool
	if err := scanRecorded(br, func(ok bool, k inbox.TxnKey) {
		if ok {
			inserted[k] = true
			return
		}
		if revoked == nil {
			revoked = map[inbox.TxnKey]bool{}
		}
		revoked[k] = true
	}); err != nil {
		br.Close()
		return nil, nil, nil, fmt.Errorf("recording transactions: %w", err)
	}
	var devs lockedDevices
	if len(local) > 0 {
		if devs, err = scanLockedDevices(br); err != nil {
			br.Close()
			return nil, nil, nil, err
		}
	}
	if err := br.Close(); err != nil {
		return nil, nil, nil, fmt.Errorf("locking recipient devices: %w", err)
	}

	// What each send writes, in arrival order.
	var rows recipientRows
	var edus []inbox.OutboundEDU
	var lookup txnKeys // duplicates of transactions recorded before this group
	stale := false
	for i, q := range group {
		a := q.a
		if revoked[a.Txn] {
			// Its token no longer names its device: nothing is written
			// for it (the first of its key carried the guard).
			if refused == nil {
				refused = make([]bool, len(group))
			}
			refused[i] = true
			continue
		}
		if first := firstOf[a.Txn]; first != i || !inserted[a.Txn] {
			results[i].Duplicate = true
			if inserted[a.Txn] {
				results[i].Response = group[first].a.Response
			} else {
				lookup.add(a.Txn)
			}
			continue
		}
		results[i].Response = a.Response
		results[i].Unknown, results[i].Delivered = devs.expand(a.Local, a.Sender, a.EventType, &rows)
		edus = append(edus, a.Remote...)
		results[i].Queued = len(a.Remote)
		stale = stale || a.Stale
	}
	b = &pgx.Batch{}
	if stale {
		plan, err := applyStale(ctx, conn, &rows, b)
		if err != nil {
			return nil, nil, nil, err
		}
		from := 0
		for i := range group {
			n := results[i].Delivered // 0 for duplicates
			results[i].Delivered -= plan.Skipped(from, from+n)
			results[i].Dropped = plan.Drops(from, from+n)
			from += n
		}
	}
	keys = rows.wakeKeys(nil)

	if err := rows.write(ctx, conn.Conn, s.db.opts.InboxWrite, b); err != nil {
		return nil, nil, nil, err
	}
	// Each send's Remote is sorted by destination; a stable sort of the
	// group's keeps every destination's EDUs in arrival order.
	slices.SortStableFunc(edus, func(x, y inbox.OutboundEDU) int { return cmp.Compare(x.Destination, y.Destination) })
	keys = append(keys, queueOutbox(b, edus)...)
	writes := b.Len()
	var readRecorded func(pgx.BatchResults) error
	if len(lookup.ids) > 0 {
		b.Queue(`
			SELECT user_id, device_id, event_type, txn_id, response FROM send_txns
			WHERE (user_id, device_id, event_type, txn_id) IN (
				SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]))`,
			lookup.users, lookup.devices, lookup.types, lookup.ids)
		readRecorded = func(br pgx.BatchResults) error {
			recorded := map[inbox.TxnKey][]byte{}
			if err := scanTxnKeys(br, func(k inbox.TxnKey, r []byte) { recorded[k] = r }); err != nil {
				return fmt.Errorf("reading recorded responses: %w", err)
			}
			for i, q := range group {
				if results[i].Duplicate && results[i].Response == nil {
					r, ok := recorded[q.a.Txn]
					if !ok {
						return errors.New("reading recorded responses: a transaction record vanished")
					}
					results[i].Response = r
				}
			}
			return nil
		}
	}
	if hook := s.db.opts.BeforeGroupCommit; hook != nil {
		if err := hook(ctx, len(group)); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := s.commit(ctx, conn, b, writes, keys, readRecorded); err != nil {
		return nil, nil, nil, err
	}
	return results, keys, refused, nil
}

// txnKeys are transaction keys as query parameters.
type txnKeys struct{ users, devices, types, ids []string }

func (t *txnKeys) add(k inbox.TxnKey) {
	t.users = append(t.users, k.UserID)
	t.devices = append(t.devices, k.DeviceID)
	t.types = append(t.types, k.EventType)
	t.ids = append(t.ids, k.TxnID)
}

func compareTxn(a, b inbox.TxnKey) int {
	return cmp.Or(cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.DeviceID, b.DeviceID),
		cmp.Compare(a.EventType, b.EventType), cmp.Compare(a.TxnID, b.TxnID))
}

// scanRecorded reads the rows of the group's recording statement: (true,
// key) for each transaction recorded, (false, key) for each whose guard
// failed.
func scanRecorded(br pgx.BatchResults, fn func(bool, inbox.TxnKey)) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	var k inbox.TxnKey
	var ok bool
	for rows.Next() {
		if err := rows.Scan(&ok, &k.UserID, &k.DeviceID, &k.EventType, &k.TxnID); err != nil {
			return err
		}
		fn(ok, k)
	}
	return rows.Err()
}

// scanTxnKeys reads rows of (user_id, device_id, event_type, txn_id,
// response).
func scanTxnKeys(br pgx.BatchResults, fn func(inbox.TxnKey, []byte)) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	var k inbox.TxnKey
	for rows.Next() {
		var resp []byte
		if err := rows.Scan(&k.UserID, &k.DeviceID, &k.EventType, &k.TxnID, &resp); err != nil {
			return err
		}
		fn(k, resp)
	}
	return rows.Err()
}
