package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/testdb"
)

// TestLostAcknowledgementRedeliversNothing is the invariant that lets an
// acknowledging sync commit without waiting for its WAL flush (DESIGN
// invariant 11): a DELETE lost in a crash leaves acknowledged rows behind,
// and a client holding the newer since must never be given them again.
// Losing the DELETE cannot be staged (the answer and the flush are one
// pipeline), so the test puts the acknowledged rows back, exactly as they
// were, and syncs with the since that acknowledged them.
func TestLostAcknowledgementRedeliversNothing(t *testing.T) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, postgres.Options{URL: testdb.New(t), Migrate: true, MaxConns: 1})
	require.NoError(t, err)
	defer db.Close()
	d, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: "B"})
	require.NoError(t, err)
	dev := inbox.Recipient{UserID: d.UserID, NID: d.NID}
	svc := inbox.New(inbox.Config{ServerName: "example.org", Store: db.Inbox()})
	for i := range 6 {
		_, err := svc.Send(ctx, inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.test", TxnID: fmt.Sprint(i)},
			inbox.Messages{"@bob:example.org": {"B": []byte(fmt.Sprintf(`{"n":%d}`, i))}})
		require.NoError(t, err)
	}
	type row struct {
		pos     int64
		content []byte
	}
	var all []row
	rows, err := db.Pool().Query(ctx, `SELECT pos, content FROM device_inbox WHERE device_nid = $1 ORDER BY pos`, dev.NID)
	require.NoError(t, err)
	for rows.Next() {
		var r row
		require.NoError(t, rows.Scan(&r.pos, &r.content))
		all = append(all, r)
	}
	require.NoError(t, rows.Err())
	require.Len(t, all, 6)

	ns := func(b inbox.Batch) []string {
		var out []string
		for _, e := range b.Events {
			out = append(out, string(e.Content))
		}
		return out
	}
	// Deliver two at a time, acknowledging each batch with the next since.
	b1, err := svc.Sync(ctx, dev, inbox.Position{NID: dev.NID}, 2)
	require.NoError(t, err)
	b2, err := svc.Sync(ctx, dev, b1.Next, 2) // acknowledges 0, 1
	require.NoError(t, err)
	b3, err := svc.Sync(ctx, dev, b2.Next, 2) // acknowledges 2, 3
	require.NoError(t, err)
	require.Equal(t, []string{`{"n":4}`, `{"n":5}`}, ns(b3))

	// The crash lost both acknowledgements: rows 0–3 are back.
	resurrect := func(rs []row) {
		t.Helper()
		for _, r := range rs {
			_, err := db.Pool().Exec(ctx, `
				INSERT INTO device_inbox (user_id, device_nid, pos, sender, type, content)
				OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, '@alice:example.org', 'm.test', $4)`,
				dev.UserID, dev.NID, r.pos, r.content)
			require.NoError(t, err)
		}
	}
	resurrect(all[:4])
	pending := func() []int64 {
		t.Helper()
		rows, err := db.Pool().Query(ctx, `SELECT pos FROM device_inbox WHERE device_nid = $1 ORDER BY pos`, dev.NID)
		require.NoError(t, err)
		var out []int64
		for rows.Next() {
			var p int64
			require.NoError(t, rows.Scan(&p))
			out = append(out, p)
		}
		require.NoError(t, rows.Err())
		return out
	}

	// The client holding b2.Next (which acknowledged 0 and 1, and was given
	// 2 and 3) gets 4 and 5 again, as a reused since must, and nothing at or
	// below its since; the sync deletes what it acknowledges (2, 3).
	again, err := svc.Sync(ctx, dev, b2.Next, 2)
	require.NoError(t, err)
	require.Equal(t, ns(b3), ns(again), "rows at or below the since are never handed out")
	require.Equal(t, []int64{all[0].pos, all[1].pos, all[4].pos, all[5].pos}, pending(),
		"the acknowledged range (2, 3) is deleted; rows below the since's low end stay for the purge or expiry")

	// The client holding the newest since gets nothing of the old rows
	// either, with or without anything to acknowledge.
	resurrect(all[2:4])
	b4, err := svc.Sync(ctx, dev, b3.Next, 2) // acknowledges 4, 5
	require.NoError(t, err)
	require.Empty(t, b4.Events)
	require.Equal(t, []int64{all[0].pos, all[1].pos, all[2].pos, all[3].pos}, pending())
	b5, err := svc.Sync(ctx, dev, b4.Next, 2)
	require.NoError(t, err)
	require.Empty(t, b5.Events)

	// A new message after all this is delivered once, and only it.
	_, err = svc.Send(ctx, inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.test", TxnID: "new"},
		inbox.Messages{"@bob:example.org": {"B": []byte(`{"n":6}`)}})
	require.NoError(t, err)
	b6, err := svc.Sync(ctx, dev, b5.Next, 2)
	require.NoError(t, err)
	require.Equal(t, []string{`{"n":6}`}, ns(b6))

	// Deleting the device takes the leftovers with it.
	require.NoError(t, svc.PurgeDevice(ctx, dev))
	require.Empty(t, pending())
}

// TestAckAsyncCommitStaysInItsTransaction: the acknowledging sync's
// synchronous_commit = off must end with its transaction. The pool has one
// connection, so a setting leaking from the sync would reach the send that
// follows it and let the send answer 200 before its rows are on disk.
func TestAckAsyncCommitStaysInItsTransaction(t *testing.T) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, postgres.Options{URL: testdb.New(t), Migrate: true, MaxConns: 1})
	require.NoError(t, err)
	defer db.Close()
	d, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: "B"})
	require.NoError(t, err)
	dev := inbox.Recipient{UserID: d.UserID, NID: d.NID}
	svc := inbox.New(inbox.Config{ServerName: "example.org", Store: db.Inbox()})
	setting := func() string {
		t.Helper()
		var v string
		require.NoError(t, db.Pool().QueryRow(ctx, `SHOW synchronous_commit`).Scan(&v))
		return v
	}
	require.Equal(t, "on", setting())
	pos := inbox.Position{NID: dev.NID}
	for i := range 3 {
		_, err := svc.Send(ctx, inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.test", TxnID: fmt.Sprint(i)},
			inbox.Messages{"@bob:example.org": {"B": []byte(`{}`)}})
		require.NoError(t, err)
		b, err := svc.Sync(ctx, dev, pos, 100)
		require.NoError(t, err)
		require.Len(t, b.Events, 1)
		pos = b.Next
		require.Equal(t, "on", setting(), "after sync %d", i)
		// With the device-list head and the key counts in the same
		// pipeline, too.
		_, err = svc.SyncCheck(ctx, inbox.CheckQuery{Device: dev, Since: pos, Limit: 100, KeyCounts: true})
		require.NoError(t, err)
		require.Equal(t, "on", setting(), "after sync %d with the head and the counts", i)
	}
}

// TestAckAsyncCommitSQLCoversThePipeline checks the mechanism Sync relies
// on: the setting, queued first in a pipeline (an implicit transaction), is
// in force for the statements after it, so for the COMMIT at the pipeline's
// end, and is gone afterwards.
func TestAckAsyncCommitSQLCoversThePipeline(t *testing.T) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, postgres.Options{URL: testdb.New(t), Migrate: true})
	require.NoError(t, err)
	defer db.Close()
	conn, err := db.Pool().Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue(postgres.AckAsyncCommitSQL)
	b.Queue(`SHOW synchronous_commit`)
	br := conn.SendBatch(ctx, b)
	_, err = br.Exec()
	require.NoError(t, err)
	var inside, after string
	require.NoError(t, br.QueryRow().Scan(&inside))
	require.NoError(t, br.Close())
	require.NoError(t, conn.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&after))
	require.Equal(t, "off", inside, "in force inside the pipeline's transaction")
	require.Equal(t, "on", after, "gone with the transaction")
}
