package inbox

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// recordingStore records what AcceptRemote is asked to store.
type recordingStore struct {
	Store
	got []*RemoteAccept
}

func (r *recordingStore) AcceptRemote(_ context.Context, batch []*RemoteAccept) ([]AcceptResult, error) {
	r.got = append(r.got, batch...)
	return make([]AcceptResult, len(batch)), nil
}

// TestKeyRequestRateLimitRemote: over federation the limit is per sending
// user, one token per recipient user; messages over it never reach the
// store and are counted; other types are untouched.
func TestKeyRequestRateLimitRemote(t *testing.T) {
	st := &recordingStore{}
	s := New(Config{ServerName: "here", Store: st, KeyRequestRate: 0.0001, KeyRequestBurst: 2})
	req := json.RawMessage(`{"action":"request","request_id":"r","requesting_device_id":"Z1"}`)
	build := func(id, sender, eventType string, msgs Messages) *RemoteAccept {
		r, err := BuildRemoteAccept("here", "there", id, sender, eventType, msgs)
		require.NoError(t, err)
		return r
	}
	_, err := s.AcceptRemote(context.Background(), []*RemoteAccept{
		// bob (two devices) and carol: two tokens, both messages to bob kept.
		build("1", "@zed:there", TypeRoomKeyRequest, Messages{"@bob:here": {"B1": req, "B2": req}, "@carol:here": {"C1": req}}),
		// Over the limit: dropped.
		build("2", "@zed:there", TypeRoomKeyRequest, Messages{"@bob:here": {"B1": req}, "@carol:here": {"C1": req}}),
		// Another sender has a bucket of its own; other types are not limited.
		build("3", "@yan:there", TypeRoomKeyRequest, Messages{"@bob:here": {"B1": req}}),
		build("4", "@zed:there", "m.other", Messages{"@bob:here": {"B1": req}}),
	})
	require.NoError(t, err)
	require.Len(t, st.got, 4)
	require.Len(t, st.got[0].Local, 3)
	require.Empty(t, st.got[1].Local)
	require.Len(t, st.got[2].Local, 1)
	require.Len(t, st.got[3].Local, 1)
	require.Equal(t, 2.0, testutil.ToFloat64(s.m.Dropped.WithLabelValues(DropKeyRequestRateLimited)))

	off := New(Config{ServerName: "here", Store: &recordingStore{}})
	require.Nil(t, off.keys.remote, "0 turns the limit off")
}
