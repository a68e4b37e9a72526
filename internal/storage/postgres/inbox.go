package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// inboxStore is the inbox's accept path and sync, written for PostgreSQL;
// the upkeep use cases are inbox.Upkeep's, on inboxQueries.
type inboxStore struct {
	inbox.Upkeep
	db    *DB
	hooks inbox.Hooks
}

func (s *inboxStore) Epoch() string { return s.db.epoch }

// acceptAlone stores a sendToDevice in one transaction of two round trips:
//
//  1. BEGIN; insert the transaction record (a concurrent retry blocks on the
//     unique key until this commits, then reads the recorded response); lock
//     the live recipient devices in nid order (so overlapping fan-outs cannot
//     deadlock) — pipelined;
//  2. the inbox rows, the outbox EDUs, the COMMIT and then the NOTIFY —
//     pipelined.
//
// The NOTIFY runs after the COMMIT, in a transaction of its own: PostgreSQL
// serializes the commits of notifying transactions on one lock, so a NOTIFY
// inside the send's transaction would hold that lock through the send's WAL
// flush and stop concurrent sends from sharing a flush (group commit). A
// notification-only transaction writes no WAL and commits without a flush.
// Should it fail, the message is stored all the same: waiters on other
// replicas find it at their next look (see notifyFailed).
//
// A deadlock or serialization failure is retried: the transaction had no
// effect.
func (s *inboxStore) acceptAlone(ctx context.Context, a *inbox.Accept) (inbox.AcceptResult, error) {
	const attempts = 4
	for i := 0; ; i++ {
		res, keys, err := s.accept(ctx, a)
		if err == nil {
			s.db.wakeLocal(keys)
			return res, nil
		}
		if !retryable(err) || i == attempts-1 {
			return inbox.AcceptResult{}, err
		}
		s.db.log.WarnContext(ctx, "retrying sendToDevice transaction", "err", err, "attempt", i+1)
		select {
		case <-time.After(time.Duration(rand.N(10*(i+1))+1) * time.Millisecond):
		case <-ctx.Done():
			return inbox.AcceptResult{}, ctx.Err()
		}
	}
}

func (s *inboxStore) accept(ctx context.Context, a *inbox.Accept) (res inbox.AcceptResult, keys []wakeup.Key, err error) {
	conn, err := s.acquire(ctx)
	if err != nil {
		return res, nil, err
	}
	defer conn.release(ctx)

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	guardNID, guardHash := guardArgs(a.Guard)
	// The guard and the insert share one statement, and so one snapshot:
	// the transaction is recorded only if the token still names the device.
	b.Queue(`
		WITH g AS (SELECT `+senderGuardSQL("$6::bigint", "$7")+` AS ok),
		ins AS (
			INSERT INTO send_txns (user_id, device_id, event_type, txn_id, response)
			SELECT $1, $2, $3, $4, $5 FROM g WHERE g.ok
			ON CONFLICT DO NOTHING
			RETURNING 1)
		SELECT g.ok, (SELECT count(*) FROM ins) FROM g`,
		a.Txn.UserID, a.Txn.DeviceID, a.Txn.EventType, a.Txn.TxnID, a.Response, guardNID, guardHash)
	if len(a.Local) > 0 {
		queueLockDevices(b, a.Local)
	}
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return res, nil, fmt.Errorf("beginning transaction: %w", err)
	}
	conn.open = true
	var guardOK bool
	var recorded int64
	if err := br.QueryRow().Scan(&guardOK, &recorded); err != nil {
		br.Close()
		return res, nil, fmt.Errorf("recording transaction: %w", err)
	}
	var devs lockedDevices
	if len(a.Local) > 0 {
		if devs, err = scanLockedDevices(br); err != nil {
			br.Close()
			return res, nil, err
		}
	}
	if err := br.Close(); err != nil {
		return res, nil, fmt.Errorf("locking recipient devices: %w", err)
	}
	if !guardOK {
		// Nothing was written; the deferred ROLLBACK releases the locks.
		return res, nil, inbox.ErrTokenRevoked
	}
	if recorded == 0 {
		// A retry: answer what the first request answered. Nothing was
		// written; the deferred ROLLBACK releases the device locks.
		res.Duplicate = true
		err := conn.QueryRow(ctx, `
			SELECT response FROM send_txns
			WHERE user_id = $1 AND device_id = $2 AND event_type = $3 AND txn_id = $4`,
			a.Txn.UserID, a.Txn.DeviceID, a.Txn.EventType, a.Txn.TxnID).Scan(&res.Response)
		if err != nil {
			return res, nil, fmt.Errorf("reading the recorded response: %w", err)
		}
		return res, nil, nil
	}
	res.Response = a.Response

	b = &pgx.Batch{}
	var rows recipientRows
	res.Unknown, res.Delivered = devs.expand(a.Local, a.Sender, a.EventType, &rows)
	if a.Stale {
		plan, err := applyStale(ctx, conn, &rows, b)
		if err != nil {
			return res, nil, err
		}
		res.Delivered -= plan.Skipped(0, res.Delivered)
		res.Dropped = plan.Drops(0, len(plan.Skip))
	}
	keys = rows.wakeKeys(nil)
	if err := rows.write(ctx, conn.Conn, s.db.opts.InboxWrite, b); err != nil {
		return res, nil, err
	}
	keys = append(keys, queueOutbox(b, a.Remote)...)
	res.Queued = len(a.Remote)
	if hook := s.hooks.BeforeAcceptCommit; hook != nil {
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return res, nil, fmt.Errorf("writing inbox and outbox rows: %w", err)
		}
		if err := hook(ctx, a); err != nil {
			return res, nil, err
		}
		b = &pgx.Batch{}
	}
	if err := s.commit(ctx, conn, b, b.Len(), keys, nil); err != nil {
		return res, nil, err
	}
	return res, keys, nil
}

// senderGuardSQL is the condition of an inbox.SenderGuard, given the SQL
// of its NID and token hash: true when the token still names the live
// device, and for a send without a guard (NID 0; devices.nid starts at 1).
func senderGuardSQL(nid, hash string) string {
	return `(` + nid + ` = 0 OR ` + tokenGuardSQL(nid, hash) + `)`
}

// guardArgs are a guard's query parameters (0 and nil: no guard).
func guardArgs(g *inbox.SenderGuard) (int64, []byte) {
	if g == nil {
		return 0, nil
	}
	return g.NID, g.TokenHash
}

// recipientRows are inbox rows to write, in position order.
type recipientRows struct {
	users    []string
	nids     []int64
	senders  []string
	types    []string
	contents [][]byte
}

// queueInsert adds the rows to a pipeline as one INSERT.
func (r *recipientRows) queueInsert(b *pgx.Batch) {
	b.Queue(`
		INSERT INTO device_inbox (user_id, device_nid, sender, type, content)
		SELECT u, n, s, t, c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[]) AS r(u, n, s, t, c)`,
		r.users, r.nids, r.senders, r.types, r.contents)
}

// write writes the rows: with COPY at once when the strategy says so for
// this many rows, else as an INSERT queued to b.
func (r *recipientRows) write(ctx context.Context, conn *pgxpool.Conn, strategy WriteStrategy, b *pgx.Batch) error {
	switch {
	case len(r.nids) == 0:
		return nil
	case strategy == WriteCopy || (strategy == WriteAuto && len(r.nids) >= CopyThreshold):
		i := 0
		_, err := conn.CopyFrom(ctx, pgx.Identifier{"device_inbox"},
			[]string{"user_id", "device_nid", "sender", "type", "content"},
			pgx.CopyFromFunc(func() ([]any, error) {
				if i == len(r.nids) {
					return nil, nil
				}
				row := []any{r.users[i], r.nids[i], r.senders[i], r.types[i], r.contents[i]}
				i++
				return row, nil
			}))
		if err != nil {
			return fmt.Errorf("copying inbox rows: %w", err)
		}
		return nil
	default:
		r.queueInsert(b)
		return nil
	}
}

// wakeKeys appends the wake-up key of every recipient device once.
func (r *recipientRows) wakeKeys(keys []wakeup.Key) []wakeup.Key {
	seen := make(map[int64]bool, len(r.nids))
	for _, nid := range r.nids {
		if !seen[nid] {
			seen[nid] = true
			keys = append(keys, wakeup.DeviceKey(nid))
		}
	}
	return keys
}

// queueOutbox adds outbox EDUs, sorted by destination and in position
// order within one, to a pipeline: each destination's row is locked once,
// in name order (so its EDUs commit in position order and two writers
// cannot deadlock), then every EDU is inserted. It returns the
// destinations' wake-up keys.
func queueOutbox(b *pgx.Batch, edus []inbox.OutboundEDU) []wakeup.Key {
	if len(edus) == 0 {
		return nil
	}
	var keys []wakeup.Key
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
	return keys
}

// txConn is a pooled connection on which a transaction block may be open.
type txConn struct {
	*pgxpool.Conn
	open bool
}

func (s *inboxStore) acquire(ctx context.Context) (*txConn, error) {
	conn, err := s.db.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquiring a connection: %w", err)
	}
	return &txConn{Conn: conn}, nil
}

// release ends an unfinished transaction and returns the connection: one
// released inside a transaction would be closed by the pool.
func (c *txConn) release(ctx context.Context) {
	if c.open {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = c.Exec(rctx, "ROLLBACK")
		cancel()
	}
	c.Release()
}

// commit sends b — writes statements, then what read reads (if anything) —
// followed by the COMMIT and then the NOTIFYs for keys, in one pipeline.
// The NOTIFY runs after the COMMIT, in a transaction of its own (see
// acceptAlone); its failure is logged, not returned: the rows are stored.
//
// Any error leaves it unknown whether the COMMIT and the NOTIFY ran (the
// server may have run the whole pipeline while this side failed to read
// it), so this replica's waiters are woken then too: the listener drops
// this replica's own notifications (listener.listen), so a commit it
// notified must always be followed by a local wake-up. A spurious one
// costs a look.
func (s *inboxStore) commit(ctx context.Context, c *txConn, b *pgx.Batch, writes int, keys []wakeup.Key, read func(pgx.BatchResults) error) (err error) {
	b.Queue("COMMIT")
	s.db.queueNotify(b, keys)
	br := c.SendBatch(ctx, b)
	defer func() {
		if err != nil {
			br.Close()
			s.db.wakeLocal(keys)
		}
	}()
	for range writes {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("writing inbox and outbox rows: %w", err)
		}
	}
	if read != nil {
		if err := read(br); err != nil {
			return err
		}
	}
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	c.open = false
	if err := br.Close(); err != nil {
		s.db.notifyFailed(ctx, err)
	}
	return nil
}

// lockedDevices are the live devices lockDevices found and locked.
type lockedDevices struct{ *inbox.Recipients }

// lockDevicesSQL selects the live devices a list of messages addresses and
// locks them in nid order, so overlapping fan-outs cannot deadlock.
const lockDevicesSQL = `
	SELECT nid, user_id, device_id FROM devices
	WHERE deleted_at IS NULL
	  AND ((user_id, device_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
	       OR user_id = ANY($3::text[]))
	ORDER BY nid
	FOR NO KEY UPDATE`

func lockDevicesArgs(msgs []inbox.LocalMessage) []any {
	var exUsers, exDevices, starUsers []string
	for _, m := range msgs {
		if m.DeviceID == inbox.AllDevices {
			starUsers = append(starUsers, m.UserID)
		} else {
			exUsers = append(exUsers, m.UserID)
			exDevices = append(exDevices, m.DeviceID)
		}
	}
	return []any{exUsers, exDevices, starUsers}
}

// queueLockDevices adds the device lock to a pipeline.
func queueLockDevices(b *pgx.Batch, msgs []inbox.LocalMessage) {
	b.Queue(lockDevicesSQL, lockDevicesArgs(msgs)...)
}

// scanLockedDevices reads the result of queueLockDevices.
func scanLockedDevices(br pgx.BatchResults) (lockedDevices, error) {
	rows, err := br.Query()
	if err != nil {
		return lockedDevices{}, fmt.Errorf("locking recipient devices: %w", err)
	}
	return collectLocked(rows)
}

// lockDevices locks the live devices that msgs address, in nid order, and
// returns them.
func lockDevices(ctx context.Context, tx pgx.Tx, msgs []inbox.LocalMessage) (lockedDevices, error) {
	rows, err := tx.Query(ctx, lockDevicesSQL, lockDevicesArgs(msgs)...)
	if err != nil {
		return lockedDevices{}, fmt.Errorf("locking recipient devices: %w", err)
	}
	return collectLocked(rows)
}

func collectLocked(rows pgx.Rows) (lockedDevices, error) {
	defer rows.Close()
	d := lockedDevices{inbox.NewRecipients(0)}
	for rows.Next() {
		var nid int64
		var user, device string
		if err := rows.Scan(&nid, &user, &device); err != nil {
			return lockedDevices{}, err
		}
		d.Add(nid, user, device)
	}
	if err := rows.Err(); err != nil {
		return lockedDevices{}, fmt.Errorf("locking recipient devices: %w", err)
	}
	return d, nil
}

// expand appends the inbox rows of msgs, from sender with type typ, to out,
// in message order, a "*" in nid order, and returns how many messages found
// no device and how many rows it appended.
func (d lockedDevices) expand(msgs []inbox.LocalMessage, sender, typ string, out *recipientRows) (unknown, rows int) {
	before := len(out.nids)
	unknown = d.Expand(msgs, func(user string, nid int64, content json.RawMessage) {
		out.users = append(out.users, user)
		out.nids = append(out.nids, nid)
		out.senders = append(out.senders, sender)
		out.types = append(out.types, typ)
		out.contents = append(out.contents, content)
	})
	return unknown, len(out.nids) - before
}

// ackAsyncCommitSQL, first in an acknowledging sync's pipeline, lets that
// implicit transaction commit without waiting for its WAL flush: its only
// write is the acknowledgement's DELETE (see Sync). is_local confines it to
// the transaction, which a pipeline ends at its Sync message, after the
// COMMIT has read the setting. Later commits with synchronous_commit on
// flush the WAL up to their own record, the DELETE's included.
const ackAsyncCommitSQL = `SELECT set_config('synchronous_commit', 'off', true)`

// issuedInboxSQL is the highest inbox position ever issued: the identity
// sequence's last value (0 before the first). Sequences never go back, not
// when rows are deleted, nor at a restart.
const issuedInboxSQL = `(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM device_inbox_pos_seq)`

// tokenGuardSQL is the guard of a sync made with an access token
// (inbox.SyncQuery.TokenHash): the token still names the live device. An
// index lookup of one device row (by nid or by the unique token hash).
func tokenGuardSQL(nid, hash string) string {
	return `EXISTS (SELECT 1 FROM devices WHERE nid = ` + nid + ` AND token_hash = ` + hash + `::bytea AND deleted_at IS NULL)`
}

// ackSQL is the acknowledging DELETE of a sync: the device's messages in
// ($3, $4], unless $4 is above every position issued ($4 is then refused
// and nothing deleted) or the guard fails. It returns whether $4 was
// issued, whether the guard held and how many rows it deleted. The guard
// is read in the DELETE's own snapshot, so a token revoked before the
// statement started deletes nothing; as an uncorrelated subquery it gates
// the delete once, not per row.
func ackSQL(guard string) string {
	return `
		WITH issued AS (SELECT ` + issuedInboxSQL + ` AS pos),
		guard AS (SELECT ` + guard + ` AS ok),
		acked AS (
			DELETE FROM device_inbox
			WHERE user_id = $1 AND device_nid = $2 AND pos > $3 AND pos <= $4
			  AND $4 <= (SELECT pos FROM issued) AND (SELECT ok FROM guard)
			RETURNING 1
		)
		SELECT $4 <= (SELECT pos FROM issued), (SELECT ok FROM guard), (SELECT count(*) FROM acked)`
}

// deviceSQL checks, last in a sync's pipeline, that the device is alive
// and whether the guard holds.
func deviceSQL(guard string) string {
	return `SELECT EXISTS (SELECT 1 FROM devices WHERE nid = $1 AND deleted_at IS NULL), ` + guard
}

var (
	ackUnguardedSQL    = ackSQL("true")
	ackGuardedSQL      = ackSQL(tokenGuardSQL("$2", "$5"))
	deviceUnguardedSQL = deviceSQL("true")
	deviceGuardedSQL   = deviceSQL(tokenGuardSQL("$1", "$2"))
	// keyCountsSQL is sqlstmt.KeyCounts, which the sync reads with the
	// messages.
	keyCountsSQL = sqlstmt.KeyCounts.SQL(sqlstmt.Postgres)
)

// Sync acknowledges and fetches in one pipelined round trip (an implicit
// transaction): with it the device-list head, the device's key counts and
// the check of the device and of the access token, as the query asks. The
// acknowledgement deletes only (AckLo, AckHi]: everything at or below AckLo
// was deleted before that position was handed out, so the delete never
// walks the dead entries of earlier acknowledgements, and the fetch starts
// right above AckHi for the same reason.
//
// The transaction's only write is that DELETE, and it commits without
// waiting for its WAL flush (ackAsyncCommitSQL; DESIGN invariant 11). A
// DELETE lost in a crash leaves rows at or below AckHi behind, and every
// read filters on pos > since, so a client holding AckHi (or anything newer)
// is never given them again; the next acknowledgement or the device's purge
// removes them. Nothing that adds data commits this way: sends are
// transactions of their own with synchronous_commit on, and the setting is
// local to this transaction, so it never leaks to the pooled connection.
//
// With a TokenHash, the DELETE is guarded in its own snapshot (ackSQL), and
// the device check, last in the pipeline, checks the token again after
// every read: when either says the token no longer names the device,
// everything read is dropped and Sync returns inbox.ErrTokenRevoked. At
// READ COMMITTED each statement of the implicit transaction reads in a
// snapshot of its own, so the last one's is the latest: what was read
// before it was read while the token was good. (A revocation that commits
// between the DELETE and that check leaves the DELETE standing: it was
// made while the token was good, as a sync just before the revocation.)
func (s *inboxStore) Sync(ctx context.Context, q inbox.SyncQuery) (inbox.SyncResult, error) {
	b := &pgx.Batch{}
	// A since above every position issued is refused, and deletes nothing:
	// the check is part of the acknowledging DELETE (or, with nothing to
	// acknowledge, a statement of its own), in the same round trip.
	ack := q.AckHi > q.AckLo
	check := !ack && q.AckHi > 0
	guarded := q.TokenHash != nil
	if ack {
		b.Queue(ackAsyncCommitSQL)
	}
	if q.DeviceListHead {
		b.Queue(streamStateSQL)
	}
	switch {
	case ack && guarded:
		b.Queue(ackGuardedSQL, q.Device.UserID, q.Device.NID, q.AckLo, q.AckHi, q.TokenHash)
	case ack:
		b.Queue(ackUnguardedSQL, q.Device.UserID, q.Device.NID, q.AckLo, q.AckHi)
	case check:
		b.Queue(`SELECT $1::bigint <= `+issuedInboxSQL, q.AckHi)
	}
	b.Queue(`
		SELECT pos, sender, type, content, enqueued_at FROM device_inbox
		WHERE user_id = $1 AND device_nid = $2 AND pos > $3
		ORDER BY pos LIMIT $4`,
		q.Device.UserID, q.Device.NID, q.AckHi, q.Limit+1)
	if q.KeyCounts {
		b.Queue(keyCountsSQL, q.Device.NID)
	}
	if guarded {
		b.Queue(deviceGuardedSQL, q.Device.NID, q.TokenHash)
	} else {
		b.Queue(deviceUnguardedSQL, q.Device.NID)
	}
	br := s.db.pool.SendBatch(ctx, b)
	defer br.Close()
	var res inbox.SyncResult
	if ack {
		if _, err := br.Exec(); err != nil {
			return res, fmt.Errorf("acknowledging messages: %w", err)
		}
	}
	if q.DeviceListHead {
		var pruned int64
		if err := br.QueryRow().Scan(&res.DeviceListHead, &pruned); err != nil {
			return res, fmt.Errorf("reading the device-list head: %w", err)
		}
	}
	issued, ackGuard := true, true
	if ack {
		if err := br.QueryRow().Scan(&issued, &ackGuard, &res.Acked); err != nil {
			return res, fmt.Errorf("acknowledging messages: %w", err)
		}
	} else if check {
		if err := br.QueryRow().Scan(&issued); err != nil {
			return res, fmt.Errorf("checking the since position: %w", err)
		}
	}
	if err := readMessages(br, &res); err != nil {
		return res, err
	}
	if q.KeyCounts {
		rows, err := br.Query()
		if err != nil {
			return res, fmt.Errorf("counting one-time keys: %w", err)
		}
		if res.KeyCounts, err = sqlstmt.ReadKeyCounts(rows); err != nil {
			return res, err
		}
	}
	var live, tokenGuard bool
	if err := br.QueryRow().Scan(&live, &tokenGuard); err != nil {
		return res, fmt.Errorf("checking device: %w", err)
	}
	switch {
	case !ackGuard || !tokenGuard:
		return inbox.SyncResult{}, inbox.ErrTokenRevoked
	case !issued:
		return inbox.SyncResult{}, inbox.ErrNotIssued
	case !live:
		return inbox.SyncResult{}, inbox.ErrDeviceGone
	}
	if len(res.Messages) > q.Limit {
		res.Messages, res.More = res.Messages[:q.Limit], true
	}
	return res, br.Close()
}

// readMessages reads the messages a sync fetched.
func readMessages(br pgx.BatchResults, res *inbox.SyncResult) error {
	rows, err := br.Query()
	if err != nil {
		return fmt.Errorf("fetching messages: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var m inbox.Message
		if err := rows.Scan(&m.Pos, &m.Sender, &m.Type, &m.Content, &m.EnqueuedAt); err != nil {
			return fmt.Errorf("fetching messages: %w", err)
		}
		res.Messages = append(res.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("fetching messages: %w", err)
	}
	return nil
}

// AcceptRemote stores the to-device EDUs of an inbound transaction in one
// database transaction:
//
//  1. insert their deduplication records, sorted by key (so two batches
//     with the same ids in another order cannot deadlock on the unique
//     index); a concurrent copy of an EDU blocks on its key until this
//     commits, then finds it. What was not inserted is a duplicate.
//  2. lock the recipients of every new EDU at once, in nid order, exactly as
//     Accept does, and expand "*";
//  3. insert the inbox rows, EDU after EDU; after the commit, one NOTIFY.
func (s *inboxStore) AcceptRemote(ctx context.Context, batch []*inbox.RemoteAccept) ([]inbox.AcceptResult, error) {
	results := make([]inbox.AcceptResult, len(batch))
	var keys []wakeup.Key
	err := s.db.inTx(ctx, func(tx pgx.Tx) error {
		clear(results)
		keys = nil
		type dedupeKey struct{ origin, id string }
		first := map[dedupeKey]int{}
		var order []dedupeKey
		for i, r := range batch {
			k := dedupeKey{r.Origin, r.MessageID}
			if _, seen := first[k]; seen {
				results[i].Duplicate = true
				continue
			}
			first[k] = i
			order = append(order, k)
		}
		slices.SortFunc(order, func(a, b dedupeKey) int {
			return cmp.Or(cmp.Compare(a.origin, b.origin), cmp.Compare(a.id, b.id))
		})
		origins, ids := make([]string, len(order)), make([]string, len(order))
		for i, k := range order {
			origins[i], ids[i] = k.origin, k.id
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO todevice_inbound_dedupe (origin, message_id)
			SELECT o, m FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(o, m, n) ORDER BY n
			ON CONFLICT DO NOTHING
			RETURNING origin, message_id`, origins, ids)
		if err != nil {
			return fmt.Errorf("recording message ids: %w", err)
		}
		inserted := map[dedupeKey]bool{}
		var k dedupeKey
		if _, err := pgx.ForEachRow(rows, []any{&k.origin, &k.id}, func() error {
			inserted[k] = true
			return nil
		}); err != nil {
			return fmt.Errorf("recording message ids: %w", err)
		}
		var all []inbox.LocalMessage
		for k, i := range first {
			if !inserted[k] {
				results[i].Duplicate = true
			}
		}
		for i, r := range batch {
			if !results[i].Duplicate {
				all = append(all, r.Local...)
			}
		}
		b := &pgx.Batch{}
		if len(all) > 0 {
			devs, err := lockDevices(ctx, tx, all)
			if err != nil {
				return err
			}
			var out recipientRows
			stale := false
			for i, r := range batch {
				if !results[i].Duplicate {
					results[i].Unknown, results[i].Delivered = devs.expand(r.Local, r.Sender, r.EventType, &out)
					stale = stale || r.Stale
				}
			}
			if stale {
				plan, err := applyStale(ctx, tx, &out, b)
				if err != nil {
					return err
				}
				from := 0
				for i := range batch {
					n := results[i].Delivered
					results[i].Delivered -= plan.Skipped(from, from+n)
					results[i].Dropped = plan.Drops(from, from+n)
					from += n
				}
			}
			if len(out.nids) > 0 {
				out.queueInsert(b)
				keys = out.wakeKeys(keys)
			}
		}
		if b.Len() > 0 {
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return fmt.Errorf("writing inbox rows: %w", err)
			}
		}
		if s.hooks.BeforeAcceptRemoteCommit != nil {
			return s.hooks.BeforeAcceptRemoteCommit(ctx, batch)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.db.wakeLocal(keys)
	s.db.notify(ctx, keys)
	return results, nil
}

// execer is a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// deleteOutboxRows is the one statement that removes sent EDUs from the
// outbox: exactly the listed positions of one destination, never a range.
// The federation store runs it inside its fenced transaction.
func deleteOutboxRows(ctx context.Context, q execer, destination string, positions []int64) (int, error) {
	if len(positions) == 0 {
		return 0, nil
	}
	tag, err := q.Exec(ctx, `DELETE FROM todevice_outbox WHERE destination = $1 AND pos = ANY($2::bigint[])`,
		destination, positions)
	if err != nil {
		return 0, fmt.Errorf("deleting outbox rows: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// expireOutboxDestinations deletes up to limit rows enqueued before cutoff from an
// outbox table (todevice_outbox or device_list_outbox, whose stored
// federation transactions name them as source), oldest first, and returns
// the destination of each. It walks the enqueued_at index over the expired
// rows only; rows of a stored federation transaction (at most 100 per
// destination) are skipped, the transaction expires as a whole.
func expireOutboxDestinations(ctx context.Context, c conn, table, source string, cutoff time.Time, limit int) ([]string, error) {
	rows, err := c.Query(ctx, `
		WITH victims AS (
			SELECT o.destination, o.pos FROM `+table+` o
			WHERE o.enqueued_at < $1
			  AND NOT EXISTS (
				SELECT 1 FROM federation_txn_items i
				WHERE i.destination = o.destination AND i.source = $3 AND i.pos = o.pos)
			ORDER BY o.enqueued_at LIMIT $2
		)
		DELETE FROM `+table+` t USING victims v
		WHERE t.destination = v.destination AND t.pos = v.pos
		RETURNING t.destination`, cutoff, limit, source)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// expireOutboxRows is expireOutboxDestinations counted by destination.
func expireOutboxRows(ctx context.Context, c conn, table, source string, cutoff time.Time, limit int) ([]inbox.DestinationCount, error) {
	dests, err := expireOutboxDestinations(ctx, c, table, source, cutoff, limit)
	if err != nil {
		return nil, err
	}
	return inbox.CountByDestination(dests), nil
}
