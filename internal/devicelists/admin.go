package devicelists

import (
	"context"
	"fmt"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// RemoteCacheState is the administrator's view of a remote user's cached
// device list: its resync state and the devices it holds.
type RemoteCacheState struct {
	UserID string
	// Tracked is false for a user nobody local shares an encrypted room
	// with (nothing cached; the rest is zero).
	Tracked  bool
	StreamID int64
	// Stale: the cache cannot be trusted, a resync is due at RetryAt.
	Stale bool
	// SeenStreamID is the newest update that could not be applied.
	SeenStreamID int64
	Failures     int
	RetryAt      *time.Time
	UpdatedAt    time.Time
	Devices      []DeviceKeys
}

// RemoteCache reads a remote user's cached list and resync state in one
// snapshot.
func (s *store) RemoteCache(ctx context.Context, userID string) (RemoteCacheState, error) {
	var st RemoteCacheState
	err := s.db.Read(ctx, func(tx Tx) error {
		var err error
		st = RemoteCacheState{UserID: userID}
		if st.Tracked, err = tx.AdminRemoteState(ctx, userID, &st); err != nil || !st.Tracked {
			return err
		}
		st.Devices, err = tx.RemoteDevices(ctx, userID)
		return err
	})
	if err != nil {
		return RemoteCacheState{}, fmt.Errorf("reading the cached device list of %s: %w", userID, err)
	}
	return st, nil
}

// ForceResync makes a tracked remote user stale, due for a resync now, its
// backoff forgotten; false for a user not tracked. The cached list stays
// until the resync replaces it (stale, it is not answered from).
func (s *store) ForceResync(ctx context.Context, userID string) (bool, error) {
	var found bool
	err := s.db.Write(ctx, func(tx Tx) (_ []wakeup.Key, err error) {
		found, err = tx.ForceResync(ctx, userID)
		return nil, err
	})
	if err != nil {
		return false, fmt.Errorf("forcing a resync of %s: %w", userID, err)
	}
	return found, nil
}

// AdminRemoteCache reads a remote user's cached device list (admin).
func (r *Service) AdminRemoteCache(ctx context.Context, userID string) (RemoteCacheState, error) {
	if _, err := r.requireRemote(userID); err != nil {
		return RemoteCacheState{}, err
	}
	return r.store.RemoteCache(ctx, userID)
}

// AdminForceResync makes a remote user's list due for a resync now (admin);
// the caller kicks the resync worker.
func (r *Service) AdminForceResync(ctx context.Context, userID string) (bool, error) {
	if _, err := r.requireRemote(userID); err != nil {
		return false, err
	}
	return r.store.ForceResync(ctx, userID)
}

// requireRemote parses a user id that must be remote.
func (r *Service) requireRemote(userID string) (matrix.UserID, error) {
	uid, local, err := r.parseLocality(userID)
	if err == nil && local {
		err = matrix.Errorf(matrix.InvalidParam, "User %q is local: only remote users' lists are cached.", matrix.Quote(userID))
	}
	return uid, err
}
