package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/testdb"
)

// A send takes its recipients' device locks, as every writer to a device
// must for invariant 3: with a recipient's row held by another transaction,
// the send waits — PostgreSQL shows it waiting on a lock, and it has not
// returned — and completes, its row delivered, once that transaction ends.
// A send to another device does not wait. A device deleted while the send
// waits gets nothing (invariant 9).
func TestSendLocksItsRecipients(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	db, err := postgres.Open(ctx, postgres.Options{URL: url, Migrate: true})
	require.NoError(t, err)
	defer db.Close()
	held, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: "B1"})
	require.NoError(t, err)
	free, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: "B2"})
	require.NoError(t, err)
	store := db.Inbox()
	send := func(id, device string) (inbox.AcceptResult, error) {
		a, err := inbox.BuildAccept("example.org", inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A1", EventType: "m.test", TxnID: id},
			inbox.Messages{"@bob:example.org": {device: []byte(`{"id":"` + id + `"}`)}})
		require.NoError(t, err)
		return store.Accept(ctx, a)
	}

	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `SELECT 1 FROM devices WHERE nid = $1 FOR SHARE`, held.NID)
	require.NoError(t, err)

	res, err := send("free", "B2")
	require.NoError(t, err, "a device nobody holds")
	require.Equal(t, 1, res.Delivered)

	done := make(chan error, 1)
	go func() {
		_, err := send("held", "B1")
		done <- err
	}()
	waitForLock := func() {
		t.Helper()
		require.Eventually(t, func() bool {
			var waiting bool
			// Not on conn: a transaction sees pg_stat_activity as it first read it.
			err := db.Pool().QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()
			  AND wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE%')`).Scan(&waiting)
			require.NoError(t, err)
			return waiting
		}, time.Minute, 10*time.Millisecond, "the send waits for the recipient's row lock")
	}
	waitForLock()
	select {
	case err := <-done:
		t.Fatalf("the send returned (%v) while its recipient was locked", err)
	default:
	}
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, <-done)

	for _, d := range []devicelists.Device{held, free} {
		got, err := store.Sync(ctx, inbox.SyncQuery{Device: inbox.Recipient{UserID: d.UserID, NID: d.NID}, Limit: 10})
		require.NoError(t, err)
		require.Len(t, got.Messages, 1, d.DeviceID)
	}

	// A device deleted while the send waits for its lock: PostgreSQL
	// re-checks the row it finally locks, finds it deleted, and the send
	// writes nothing for it (no message outlives its device).
	tx, err = conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE devices SET deleted_at = now(), token_hash = NULL WHERE nid = $1`, held.NID)
	require.NoError(t, err)
	type result struct {
		res inbox.AcceptResult
		err error
	}
	racing := make(chan result, 1)
	go func() {
		res, err := send("racing", "B1")
		racing <- result{res, err}
	}()
	waitForLock()
	require.NoError(t, tx.Commit(ctx))
	r := <-racing
	require.NoError(t, r.err)
	require.Zero(t, r.res.Delivered, "nothing for the device deleted meanwhile")
	require.Equal(t, 1, r.res.Unknown)
	var rows int
	require.NoError(t, db.Pool().QueryRow(ctx, `SELECT count(*) FROM device_inbox WHERE device_nid = $1`, held.NID).Scan(&rows))
	require.Equal(t, 1, rows, "only the message sent before the delete")
}
