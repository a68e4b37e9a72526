package inbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
)

// tombstones reads the registry's tombstones, as the wiring does.
type tombstones struct{ store devicelists.Store }

func (t tombstones) Tombstones(ctx context.Context, limit int) ([]inbox.Recipient, error) {
	ds, err := t.store.Tombstones(ctx, limit)
	out := make([]inbox.Recipient, len(ds))
	for i, d := range ds {
		out[i] = inbox.Recipient{UserID: d.UserID, NID: d.NID}
	}
	return out, err
}

func (t tombstones) ForgetTombstone(ctx context.Context, nid int64) error {
	return t.store.ForgetTombstone(ctx, nid)
}

// PurgeDeleted empties the inbox of every deleted device, however many there
// are, forgets their tombstones, and leaves the living alone.
func TestPurgeDeleted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := storage.Open(ctx, storage.Options{URL: "sqlite:" + filepath.Join(t.TempDir(), "todeviced.db"), Migrate: true})
	require.NoError(t, err)
	defer b.Close()
	svc := inbox.New(inbox.Config{ServerName: "localhost", Store: b.Inbox()})
	const bob = "@bob:localhost"
	n := 105 // more than one batch of tombstones
	msgs := inbox.Messages{bob: {}}
	for i := range n + 1 {
		id := fmt.Sprint("D", i)
		_, _, err := b.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: bob, DeviceID: id})
		require.NoError(t, err)
		msgs[bob][id] = json.RawMessage(`{}`)
	}
	_, err = svc.Send(ctx, inbox.TxnKey{UserID: "@alice:localhost", DeviceID: "A", EventType: "m.test", TxnID: "1"}, msgs)
	require.NoError(t, err)
	for i := range n {
		_, err := b.Devices().DeleteDevice(ctx, bob, fmt.Sprint("D", i))
		require.NoError(t, err)
	}

	require.NoError(t, svc.PurgeDeleted(ctx, tombstones{b.Devices()}))
	left, err := b.Devices().Tombstones(ctx, 1000)
	require.NoError(t, err)
	require.Empty(t, left, "every tombstone is forgotten")
	backlog, err := b.Inbox().Backlog(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, backlog.Pending, "only the living device's message is left")
}
