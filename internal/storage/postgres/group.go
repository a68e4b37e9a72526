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
const (
	maxGroupSends = 64
	maxGroupRows  = 8000
)

// groupWriters is how many groups are written at once. Two let one group's
// preparation (expanding recipients, streaming rows) overlap the other's
// commit; groups to the same devices still commit one after the other, on
// the device locks.
const groupWriters = 2

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
				s.writeGroup(gctx, group)
			}
		}
		if leading && aq.handOff() {
			go func() {
				for group := aq.take(); group != nil; group = aq.take() {
					s.writeGroup(gctx, group)
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

// writeGroup writes a group and finishes each of its sends.
func (s *inboxStore) writeGroup(ctx context.Context, group []*queuedAccept) {
	if len(group) == 1 {
		group[0].finish(s.acceptAlone(ctx, group[0].a))
		return
	}
	const attempts = 4
	for i := 0; ; i++ {
		results, keys, err := s.acceptGroup(ctx, group)
		if err == nil {
			s.db.groupedSends.Add(int64(len(group)))
			s.db.wakeLocal(keys)
			for j, q := range group {
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
// (three with COPY), as accept writes one.
func (s *inboxStore) acceptGroup(ctx context.Context, group []*queuedAccept) (results []inbox.AcceptResult, keys []wakeup.Key, err error) {
	conn, err := s.db.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("acquiring a connection: %w", err)
	}
	defer conn.Release()
	open := false
	defer func() {
		if open {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = conn.Exec(rctx, "ROLLBACK")
			cancel()
		}
	}()

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
	slices.SortFunc(order, func(x, y int) int {
		a, b := group[x].a.Txn, group[y].a.Txn
		return cmp.Or(cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.DeviceID, b.DeviceID),
			cmp.Compare(a.EventType, b.EventType), cmp.Compare(a.TxnID, b.TxnID))
	})
	var tu, td, te, tt []string
	var tr [][]byte
	for _, i := range order {
		a := group[i].a
		tu, td, te, tt = append(tu, a.Txn.UserID), append(td, a.Txn.DeviceID), append(te, a.Txn.EventType), append(tt, a.Txn.TxnID)
		tr = append(tr, a.Response)
	}

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(`
		INSERT INTO send_txns (user_id, device_id, event_type, txn_id, response)
		SELECT u, d, e, t, r FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[])
			WITH ORDINALITY AS k(u, d, e, t, r, n) ORDER BY n
		ON CONFLICT DO NOTHING
		RETURNING user_id, device_id, event_type, txn_id`, tu, td, te, tt, tr)
	if len(local) > 0 {
		queueLockDevices(b, local)
	}
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return nil, nil, fmt.Errorf("beginning transaction: %w", err)
	}
	open = true
	inserted := map[inbox.TxnKey]bool{}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, nil, fmt.Errorf("recording transactions: %w", err)
	}
	var k inbox.TxnKey
	if _, err := pgx.ForEachRow(rows, []any{&k.UserID, &k.DeviceID, &k.EventType, &k.TxnID}, func() error {
		inserted[k] = true
		return nil
	}); err != nil {
		br.Close()
		return nil, nil, fmt.Errorf("recording transactions: %w", err)
	}
	var devs lockedDevices
	if len(local) > 0 {
		if devs, err = scanLockedDevices(br); err != nil {
			br.Close()
			return nil, nil, err
		}
	}
	if err := br.Close(); err != nil {
		return nil, nil, fmt.Errorf("locking recipient devices: %w", err)
	}

	// What each send writes, in arrival order.
	var out recipientRows
	var senders, types []string
	type groupEDU struct {
		inbox.OutboundEDU
		send int
	}
	var edus []groupEDU
	var lookup []inbox.TxnKey // duplicates of transactions recorded before this group
	for i, q := range group {
		a := q.a
		if first := firstOf[a.Txn]; first != i || !inserted[a.Txn] {
			results[i].Duplicate = true
			if inserted[a.Txn] {
				results[i].Response = group[first].a.Response
			} else {
				lookup = append(lookup, a.Txn)
			}
			continue
		}
		results[i].Response = a.Response
		before := len(out.nids)
		results[i].Unknown = devs.expand(a.Local, &out)
		results[i].Delivered = len(out.nids) - before
		for range results[i].Delivered {
			senders = append(senders, a.Sender)
			types = append(types, a.EventType)
		}
		for _, e := range a.Remote {
			edus = append(edus, groupEDU{e, i})
		}
		results[i].Queued = len(a.Remote)
	}
	seen := make(map[int64]bool, len(out.nids))
	for _, nid := range out.nids {
		if !seen[nid] {
			seen[nid] = true
			keys = append(keys, wakeup.DeviceKey(nid))
		}
	}

	useCopy := s.db.opts.InboxWrite == WriteCopy ||
		(s.db.opts.InboxWrite == WriteAuto && len(out.nids) >= CopyThreshold)
	b = &pgx.Batch{}
	if len(out.nids) > 0 && useCopy {
		if err := copyRows(ctx, conn, out, senders, types); err != nil {
			return nil, nil, err
		}
	} else if len(out.nids) > 0 {
		b.Queue(`
			INSERT INTO device_inbox (user_id, device_nid, sender, type, content)
			SELECT u, n, s, t, c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[]) AS r(u, n, s, t, c)`,
			out.users, out.nids, senders, types, out.contents)
	}
	if len(edus) > 0 {
		// Each destination locked once, in name order; its EDUs in arrival
		// order, so they commit in position order as a lone send's do.
		slices.SortStableFunc(edus, func(x, y groupEDU) int { return cmp.Compare(x.Destination, y.Destination) })
		dests := make([]string, len(edus))
		ids := make([]string, len(edus))
		bodies := make([][]byte, len(edus))
		for i, e := range edus {
			dests[i], ids[i], bodies[i] = e.Destination, e.MessageID, e.EDU
			if i == 0 || edus[i-1].Destination != e.Destination {
				b.Queue(`
					INSERT INTO todevice_outbox_destinations (destination, last_enqueued_at)
					VALUES ($1, now())
					ON CONFLICT (destination) DO UPDATE SET last_enqueued_at = excluded.last_enqueued_at`,
					e.Destination)
				keys = append(keys, wakeup.OutboxKey(e.Destination))
			}
		}
		b.Queue(`
			INSERT INTO todevice_outbox (destination, message_id, edu)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])`,
			dests, ids, bodies)
	}
	writes := b.Len()
	if len(lookup) > 0 {
		lu, ld, le, lt := make([]string, len(lookup)), make([]string, len(lookup)), make([]string, len(lookup)), make([]string, len(lookup))
		for i, k := range lookup {
			lu[i], ld[i], le[i], lt[i] = k.UserID, k.DeviceID, k.EventType, k.TxnID
		}
		b.Queue(`
			SELECT user_id, device_id, event_type, txn_id, response FROM send_txns
			WHERE (user_id, device_id, event_type, txn_id) IN (
				SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]))`, lu, ld, le, lt)
	}
	if hook := s.db.opts.BeforeGroupCommit; hook != nil {
		if err := hook(ctx, len(group)); err != nil {
			return nil, nil, err
		}
	}
	b.Queue("COMMIT")
	queueNotify(b, keys)
	br = conn.SendBatch(ctx, b)
	for range writes {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, nil, fmt.Errorf("writing inbox and outbox rows: %w", err)
		}
	}
	if len(lookup) > 0 {
		recorded := map[inbox.TxnKey][]byte{}
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return nil, nil, fmt.Errorf("reading recorded responses: %w", err)
		}
		var resp []byte
		if _, err := pgx.ForEachRow(rows, []any{&k.UserID, &k.DeviceID, &k.EventType, &k.TxnID, &resp}, func() error {
			recorded[k] = resp
			return nil
		}); err != nil {
			br.Close()
			return nil, nil, fmt.Errorf("reading recorded responses: %w", err)
		}
		for i, q := range group {
			if results[i].Duplicate && results[i].Response == nil {
				r, ok := recorded[q.a.Txn]
				if !ok {
					br.Close()
					return nil, nil, errors.New("reading recorded responses: a transaction record vanished")
				}
				results[i].Response = r
			}
		}
	}
	if _, err := br.Exec(); err != nil {
		br.Close()
		return nil, nil, fmt.Errorf("committing: %w", err)
	}
	open = false
	if err := br.Close(); err != nil {
		s.db.notifyFailed(ctx, err)
	}
	return results, keys, nil
}

// copyRows writes rows with COPY, each with its own sender and type.
func copyRows(ctx context.Context, conn interface {
	CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error)
}, rows recipientRows, senders, types []string) error {
	i := 0
	_, err := conn.CopyFrom(ctx, pgx.Identifier{"device_inbox"},
		[]string{"user_id", "device_nid", "sender", "type", "content"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == len(rows.nids) {
				return nil, nil
			}
			r := []any{rows.users[i], rows.nids[i], senders[i], types[i], rows.contents[i]}
			i++
			return r, nil
		}))
	if err != nil {
		return fmt.Errorf("copying inbox rows: %w", err)
	}
	return nil
}
