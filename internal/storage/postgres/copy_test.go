package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/testdb"
)

// TestLargeFanOutViaCopy runs fan-outs big enough for the default strategy
// to switch to COPY: every device gets every message once, in order, and a
// transaction that fails before its commit leaves none of its copied rows.
func TestLargeFanOutViaCopy(t *testing.T) {
	ctx := context.Background()
	var fail atomic.Bool
	db, err := postgres.Open(ctx, postgres.Options{URL: testdb.New(t), Migrate: true,
		InboxHooks: inbox.Hooks{BeforeAcceptCommit: func(context.Context, *inbox.Accept) error {
			if fail.Load() {
				return errors.New("simulated crash before commit")
			}
			return nil
		}}})
	require.NoError(t, err)
	defer db.Close()
	n := postgres.CopyThreshold + 50
	var devs []inbox.Recipient
	for i := range n {
		d, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: "@bob:example.org", DeviceID: fmt.Sprintf("D%04d", i)})
		require.NoError(t, err)
		devs = append(devs, inbox.Recipient{UserID: d.UserID, NID: d.NID})
	}
	svc := inbox.New(inbox.Config{ServerName: "example.org", Store: db.Inbox()})
	send := func(id string, v int) error {
		_, err := svc.Send(ctx, inbox.TxnKey{UserID: "@alice:example.org", DeviceID: "A", EventType: "m.test", TxnID: id},
			inbox.Messages{"@bob:example.org": {"*": []byte(fmt.Sprintf(`{"n":%d}`, v))}})
		return err
	}
	require.NoError(t, send("1", 1))
	fail.Store(true)
	require.Error(t, send("2", 2))
	fail.Store(false)
	require.NoError(t, send("3", 3))
	for _, d := range []inbox.Recipient{devs[0], devs[n/2], devs[n-1]} {
		b, err := svc.Sync(ctx, d, inbox.Position{NID: d.NID}, 100)
		require.NoError(t, err)
		require.Len(t, b.Events, 2, "device %d", d.NID)
		require.JSONEq(t, `{"n":1}`, string(b.Events[0].Content))
		require.JSONEq(t, `{"n":3}`, string(b.Events[1].Content), "the failed send's copied rows were rolled back")
	}
	bl, err := db.Inbox().Backlog(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2*n, bl.Pending)
}
