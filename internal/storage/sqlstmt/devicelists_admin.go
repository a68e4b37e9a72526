package sqlstmt

import (
	"context"

	"github.com/todeviced/todeviced/internal/devicelists"
)

// The admin API's statements of the remote device-list cache, both
// dialects.
var (
	adminRemoteState = New(`
		SELECT stream_id, stale, seen_stream_id, failures, retry_at, updated_at
		FROM remote_device_lists WHERE user_id = $1`)
	forceResync = New(`
		UPDATE remote_device_lists SET stale = TRUE, retry_at = {now}, failures = 0, updated_at = {now}
		WHERE user_id = $1`)
)

func (t DeviceTx) AdminRemoteState(ctx context.Context, userID string, st *devicelists.RemoteCacheState) (bool, error) {
	return ScanFound(t.C.QueryRow(ctx, adminRemoteState, userID),
		&st.StreamID, &st.Stale, &st.SeenStreamID, &st.Failures, &st.RetryAt, &st.UpdatedAt)
}

func (t DeviceTx) ForceResync(ctx context.Context, userID string) (bool, error) {
	return t.changed(ctx, "forcing a resync", forceResync, userID)
}
