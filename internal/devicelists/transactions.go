package devicelists

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// NewStore is the device-list store over a database's statements: the
// transactions of every use case, written once for both backends.
func NewStore(db DB, hooks Hooks) Store {
	return &store{Queries: db, db: db, hooks: hooks}
}

type store struct {
	Queries
	db    DB
	hooks Hooks
}

var _ Store = (*store)(nil)

// appendStream takes the stream lock and a position.
func (s *store) appendStream(ctx context.Context, tx Tx, kind, userID, roomID string) (int64, error) {
	if err := tx.LockStream(ctx); err != nil {
		return 0, err
	}
	pos, err := tx.AppendStream(ctx, kind, userID, roomID)
	if err != nil {
		return 0, err
	}
	if h := s.hooks.AfterStreamAppend; h != nil {
		return pos, h(ctx, kind, userID, roomID)
	}
	return pos, nil
}

// crossSigningKeys reads a user's master and self-signing keys.
func crossSigningKeys(ctx context.Context, tx Tx, userID string) (map[string]json.RawMessage, error) {
	cs, err := tx.CrossSigningOf(ctx, []string{userID})
	return cs[userID], err
}

// userKeys are the wake-up keys of users.
func userKeys(users []string) []wakeup.Key {
	keys := make([]wakeup.Key, len(users))
	for i, u := range users {
		keys[i] = wakeup.UserKey(u)
	}
	return keys
}

// deviceChanged records a change of userID's devices (local or remote) and
// returns the position and whom to wake: the user and the local users
// sharing an encrypted room with them.
func (s *store) deviceChanged(ctx context.Context, tx Tx, userID string) (int64, []wakeup.Key, error) {
	pos, err := s.appendStream(ctx, tx, "device", userID, "")
	if err != nil {
		return 0, nil, err
	}
	users, err := tx.LocalSharers(ctx, userID)
	if err != nil {
		return 0, nil, err
	}
	keys := []wakeup.Key{wakeup.UserKey(userID)}
	for _, u := range users {
		if u != userID {
			keys = append(keys, wakeup.UserKey(u))
		}
	}
	return pos, keys, nil
}

// queueOutbound queues edu for every server sharing a room with the local
// user and returns their outbox wake-up keys. The caller holds the stream
// lock.
func (s *store) queueOutbound(ctx context.Context, tx Tx, userID, eduType string, edu []byte) ([]wakeup.Key, error) {
	dests, err := tx.RemoteServers(ctx, userID)
	if err != nil || len(dests) == 0 {
		return nil, err
	}
	if err := tx.QueueOutbound(ctx, dests, eduType, edu); err != nil {
		return nil, err
	}
	keys := make([]wakeup.Key, len(dests))
	for i, d := range dests {
		keys[i] = wakeup.OutboxKey(d)
	}
	if h := s.hooks.AfterOutboxQueue; h != nil {
		return keys, h(ctx, userID, eduType)
	}
	return keys, nil
}

// localDeviceChanged records a change of a local user's device: a stream
// position, the user's new head, and an m.device_list_update naming the
// previous head for every server sharing a room with the user.
func (s *store) localDeviceChanged(ctx context.Context, tx Tx, userID string, d DeviceUpdate) ([]wakeup.Key, error) {
	pos, wake, err := s.deviceChanged(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	prev, err := tx.Head(ctx, userID)
	if err != nil {
		return nil, err
	}
	if err := tx.SetHead(ctx, userID, pos); err != nil {
		return nil, err
	}
	edu, err := DeviceListUpdateEDU(userID, pos, prev, d)
	if err != nil {
		return nil, err
	}
	out, err := s.queueOutbound(ctx, tx, userID, matrix.EDUDeviceListUpdate, edu)
	if err != nil {
		return nil, err
	}
	return append(wake, out...), nil
}

// PutDevice creates or updates a device. A new device, or a change of its
// keys or display name, is a device-list change of its user.
func (s *store) PutDevice(ctx context.Context, p PutDevice) (Device, bool, error) {
	var d Device
	var created bool
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		d, created = Device{UserID: p.UserID, DeviceID: p.DeviceID}, false
		if p.TokenHash != nil {
			// Two devices given one token at once: the backend's unique
			// index (or its writer's turn) stops the second.
			taken, err := tx.TokenTaken(ctx, p.TokenHash, p.UserID, p.DeviceID)
			if err != nil {
				return nil, err
			}
			if taken {
				return nil, ErrTokenInUse
			}
		}
		old, existed, err := tx.LiveDevice(ctx, p.UserID, p.DeviceID)
		if err != nil {
			return nil, err
		}
		var oldp *StoredDevice
		if existed {
			oldp = &old
		}
		now, ins, err := tx.UpsertDevice(ctx, p, oldp)
		if err != nil {
			return nil, err
		}
		d.NID, created = now.NID, ins
		if now.DisplayName != nil {
			d.DisplayName = *now.DisplayName
		}
		var wake []wakeup.Key
		if existed && p.TokenHash != nil {
			// The device may have a new token: its syncs that wait on the
			// old one, or skip their first check (devicesync's quiet
			// devices), look at once and find it revoked (invariant 9).
			wake = append(wake, wakeup.DeviceKey(now.NID))
		}
		changed := !existed ||
			(p.Keys != nil && !bytes.Equal(old.Keys, p.Keys)) ||
			(p.DisplayName != nil && (old.DisplayName == nil || *old.DisplayName != *p.DisplayName))
		if !changed {
			return wake, nil
		}
		w, err := s.localDeviceChanged(ctx, tx, p.UserID, p.Update(d.DisplayName, now.Keys))
		return append(w, wake...), err
	})
	if err != nil {
		return Device{}, false, err
	}
	return d, created, nil
}

// DeleteDevice tombstones the device; a deleted device is a device-list
// change of its user, and its waiters are woken to find it gone.
func (s *store) DeleteDevice(ctx context.Context, userID, deviceID string) (Device, error) {
	var d Device
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		var wake []wakeup.Key
		var err error
		d, wake, err = s.deleteDevice(ctx, tx, userID, deviceID)
		return wake, err
	})
	if err != nil {
		return Device{}, err
	}
	return d, nil
}

// sortedTypes are the key types of keys, sorted: rows are written in one
// order, so that writers cannot deadlock.
func sortedTypes(keys map[string]json.RawMessage) []string {
	types := make([]string, 0, len(keys))
	for t := range keys {
		types = append(types, t)
	}
	slices.Sort(types)
	return types
}

func (s *store) PutCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage) (bool, error) {
	var changed bool
	err := s.db.Write(ctx, func(tx Tx) (wake []wakeup.Key, err error) {
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		changed, wake, err = s.putCrossSigning(ctx, tx, userID, keys)
		return wake, err
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// putCrossSigning stores a local user's cross-signing keys and records a
// change: a device-list change, and an m.signing_key_update when the master
// or self-signing key changed. The caller holds the stream lock.
func (s *store) putCrossSigning(ctx context.Context, tx Tx, userID string, keys map[string]json.RawMessage) (bool, []wakeup.Key, error) {
	changed := false
	public := false // the master or self-signing key changed: other servers are told
	for _, t := range sortedTypes(keys) {
		n, err := tx.PutCrossSigningKey(ctx, userID, t, keys[t])
		if err != nil {
			return false, nil, err
		}
		if n {
			changed = true
			public = public || t != UserSigningKey
		}
	}
	if !changed {
		return false, nil, nil
	}
	_, wake, err := s.deviceChanged(ctx, tx, userID)
	if err != nil || !public {
		return true, wake, err
	}
	out, err := s.queueSigningKeyUpdate(ctx, tx, userID)
	return true, append(wake, out...), err
}

// queueSigningKeyUpdate queues an m.signing_key_update of a local user's
// master and self-signing keys, with the signatures everyone sees, for the
// servers sharing a room with the user.
func (s *store) queueSigningKeyUpdate(ctx context.Context, tx Tx, userID string) ([]wakeup.Key, error) {
	cs, err := crossSigningKeys(ctx, tx, userID)
	if err != nil {
		return nil, err
	}
	master := cs[MasterKey]
	if master != nil {
		sigs, err := tx.SignaturesOf(ctx, []string{userID})
		if err != nil {
			return nil, err
		}
		master = mergeMasterSignatures(master, userID, sigs, "")
	}
	edu, err := SigningKeyUpdateEDU(userID, master, cs[SelfSigningKey])
	if err != nil {
		return nil, err
	}
	return s.queueOutbound(ctx, tx, userID, matrix.EDUSigningKeyUpdate, edu)
}

func (s *store) SetRoomEncrypted(ctx context.Context, roomID string) (bool, error) {
	var changed bool
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		changed = false
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		isNew, err := tx.MarkRoomEncrypted(ctx, roomID)
		if err != nil || !isNew {
			return nil, err
		}
		changed = true
		if _, err := s.appendStream(ctx, tx, "encryption", "", roomID); err != nil {
			return nil, err
		}
		if err := tx.TrackRemote(ctx, roomID, true, nil); err != nil {
			return nil, err
		}
		locals, err := tx.RoomLocals(ctx, roomID)
		return userKeys(locals), err
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// SetMemberships: in an encrypted room, every change of whether a user
// shares it takes a position (in the order UpsertMemberships returns, by
// user) and starts or stops tracking remote users.
func (s *store) SetMemberships(ctx context.Context, roomID string, ms []Membership) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	local := make(map[string]bool, len(ms))
	for _, m := range ms {
		local[m.UserID] = m.Local
	}
	var applied int
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		applied = 0
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		encrypted, err := tx.RoomEncrypted(ctx, roomID)
		if err != nil {
			return nil, err
		}
		written, err := tx.UpsertMemberships(ctx, roomID, ms)
		if err != nil {
			return nil, err
		}
		applied = len(written)
		var changes []SharingChange
		for _, w := range written {
			if encrypted && Sharing(w.Before) != Sharing(w.Now) {
				changes = append(changes, SharingChange{UserID: w.UserID, Local: local[w.UserID], Sharing: Sharing(w.Now)})
			}
		}
		if len(changes) == 0 {
			return nil, nil
		}
		var wake []wakeup.Key
		for _, c := range changes {
			if _, err := s.appendStream(ctx, tx, "membership", c.UserID, roomID); err != nil {
				return nil, err
			}
			wake = append(wake, wakeup.UserKey(c.UserID))
		}
		t := TrackingOf(changes)
		if t.AllStart || len(t.Start) > 0 {
			if err := tx.TrackRemote(ctx, roomID, t.AllStart, t.Start); err != nil {
				return nil, err
			}
		}
		if t.AllStop || len(t.Stop) > 0 {
			victims, err := tx.UnsharedRemote(ctx, roomID, t.AllStop, t.Stop)
			if err != nil {
				return nil, err
			}
			if err := tx.DropRemote(ctx, victims); err != nil {
				return nil, err
			}
		}
		locals, err := tx.RoomLocals(ctx, roomID)
		return append(wake, userKeys(locals)...), err
	})
	if err != nil {
		return 0, err
	}
	return applied, nil
}

// PruneStream holds the stream lock, so that no writer commits below the
// new pruning point while it moves.
func (s *store) PruneStream(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		n = 0
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		var top int64
		var err error
		if n, top, err = tx.PruneOldest(ctx, cutoff, limit); err != nil || n == 0 {
			return nil, err
		}
		return nil, tx.RaisePrunedBelow(ctx, top)
	})
	if err != nil {
		return 0, fmt.Errorf("pruning the device-list stream: %w", err)
	}
	return n, nil
}

func (s *store) UserDeviceList(ctx context.Context, userID string) (UserDeviceList, error) {
	l := UserDeviceList{UserID: userID}
	err := s.db.Read(ctx, func(tx Tx) error {
		var err error
		if l.StreamID, err = tx.Head(ctx, userID); err != nil {
			return err
		}
		if l.Devices, err = tx.LiveDeviceKeys(ctx, userID); err != nil {
			return err
		}
		cs, err := crossSigningKeys(ctx, tx, userID)
		l.MasterKey, l.SelfSigningKey = cs[MasterKey], cs[SelfSigningKey]
		return err
	})
	if err != nil {
		return UserDeviceList{}, fmt.Errorf("reading the device list of %s: %w", userID, err)
	}
	return l, nil
}

// ---------------------------------------------------------------------------
// The remote cache. Every transaction here holds the stream lock from its
// start: the cache of a remote user changes under the same lock as the
// memberships that decide whether it is kept.
// ---------------------------------------------------------------------------

// trackIfShared starts tracking an untracked user who shares an encrypted
// room with a local user (a resync is due); anyone else is ignored.
func trackIfShared(ctx context.Context, tx Tx, userID string, seen int64) (RemoteOutcome, error) {
	tracked, err := tx.TrackIfShared(ctx, userID, seen)
	if err != nil {
		return "", err
	}
	if !tracked {
		return RemoteIgnored, nil
	}
	return RemoteResync, nil
}

func (s *store) ApplyRemoteUpdate(ctx context.Context, u RemoteUpdate) (RemoteOutcome, error) {
	var out RemoteOutcome
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		out = ""
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		st, tracked, err := tx.RemoteState(ctx, u.UserID)
		if err != nil {
			return nil, err
		}
		if !tracked {
			out, err = trackIfShared(ctx, tx, u.UserID, u.StreamID)
			return nil, err
		}
		out = DecideRemoteUpdate(st, u)
		switch out {
		case RemoteResync:
			return nil, tx.MarkStale(ctx, u.UserID, u.StreamID)
		case RemoteApplied:
		default:
			return nil, nil
		}
		if u.Deleted {
			err = tx.DeleteRemoteDevice(ctx, u.UserID, u.DeviceID)
		} else {
			err = tx.UpsertRemoteDevice(ctx, DeviceKeys{UserID: u.UserID, DeviceID: u.DeviceID, DisplayName: u.DisplayName, Keys: u.Keys})
		}
		if err != nil {
			return nil, err
		}
		if err := tx.SetRemoteApplied(ctx, u.UserID, u.StreamID, PushApplied(st.AppliedIDs, u.StreamID)); err != nil {
			return nil, err
		}
		_, wake, err := s.deviceChanged(ctx, tx, u.UserID)
		return wake, err
	})
	if err != nil {
		return "", err
	}
	return out, nil
}

func (s *store) ApplyRemoteSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) (RemoteOutcome, error) {
	var out RemoteOutcome
	types := sortedTypes(keys)
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		out = RemoteIgnored
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		if _, tracked, err := tx.RemoteState(ctx, userID); err != nil {
			return nil, err
		} else if !tracked {
			out, err = trackIfShared(ctx, tx, userID, 0)
			return nil, err
		}
		changed := false
		for _, t := range types {
			n, err := tx.PutCrossSigningKey(ctx, userID, t, keys[t])
			if err != nil {
				return nil, err
			}
			changed = changed || n
		}
		if !changed {
			return nil, nil // a replay
		}
		out = RemoteApplied
		_, wake, err := s.deviceChanged(ctx, tx, userID)
		return wake, err
	})
	if err != nil {
		return "", err
	}
	return out, nil
}

func (s *store) CompleteResync(ctx context.Context, l RemoteDeviceList) (ResyncResult, error) {
	var res ResyncResult
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		res = ResyncResult{}
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		seen, tracked, err := tx.RemoteSeen(ctx, l.UserID)
		if err != nil || !tracked {
			return nil, err // not tracked: dropped meanwhile
		}
		res.Tracked = true
		res.StillStale = l.StreamID < seen
		old, err := tx.RemoteDevices(ctx, l.UserID)
		if err != nil {
			return nil, err
		}
		cs, err := crossSigningKeys(ctx, tx, l.UserID)
		if err != nil {
			return nil, err
		}
		res.Changed = !SameDevices(old, l.Devices) ||
			!bytes.Equal(cs[MasterKey], l.MasterKey) || !bytes.Equal(cs[SelfSigningKey], l.SelfSigningKey)
		if res.Changed {
			if err := tx.ReplaceRemoteList(ctx, l); err != nil {
				return nil, err
			}
		}
		if err := tx.FinishResync(ctx, l.UserID, l.StreamID, res.StillStale); err != nil {
			return nil, err
		}
		if !res.Changed {
			return nil, nil
		}
		_, wake, err := s.deviceChanged(ctx, tx, l.UserID)
		return wake, err
	})
	if err != nil {
		return ResyncResult{}, err
	}
	return res, nil
}

func (s *store) SweepRemoteUsers(ctx context.Context, after string, limit int) (string, int, error) {
	var next string
	var dropped int
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		next, dropped = "", 0
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		users, err := tx.RemoteUsersAfter(ctx, after, limit)
		if err != nil {
			return nil, err
		}
		var victims []string
		for _, u := range users {
			next = u.UserID
			if !u.Shared {
				victims = append(victims, u.UserID)
			}
		}
		if len(users) < limit {
			next = ""
		}
		dropped = len(victims)
		return nil, tx.DropRemote(ctx, victims)
	})
	if err != nil {
		return "", 0, fmt.Errorf("sweeping remote device lists: %w", err)
	}
	return next, dropped, nil
}

// Changes computes changed/left for userID over (from, to], in one read
// snapshot:
//   - users sharing an encrypted room with userID now whose devices changed,
//     and userID itself if its own devices changed;
//   - for membership and encryption changes in rooms userID is or was in:
//     the users concerned (every member, when userID's own membership or the
//     room's encryption changed) go to changed if they share an encrypted
//     room with userID now, else to left.
func (s *store) Changes(ctx context.Context, userID string, from, to int64) (Changes, error) {
	var out Changes
	err := s.db.Read(ctx, func(tx Tx) error {
		sharedUsers, err := tx.SharedWith(ctx, userID)
		if err != nil {
			return err
		}
		shared := make(map[string]bool, len(sharedUsers))
		for _, u := range sharedUsers {
			shared[u] = true
		}
		changed := map[string]bool{}
		left := map[string]bool{}
		devChanged, err := tx.DeviceChanges(ctx, userID, sharedUsers, from, to)
		if err != nil {
			return err
		}
		for _, u := range devChanged {
			changed[u] = true
		}
		// New signatures of userID's on other users' keys.
		signed, err := tx.SignatureChanges(ctx, userID, from, to)
		if err != nil {
			return err
		}
		for _, u := range signed {
			changed[u] = true
		}
		entries, err := tx.RoomChanges(ctx, userID, from, to)
		if err != nil {
			return err
		}
		var candidates, wholeRooms []string
		seenRoom := map[string]bool{}
		for _, e := range entries {
			if e.Kind == "encryption" || e.UserID == userID {
				if !seenRoom[e.RoomID] {
					seenRoom[e.RoomID] = true
					wholeRooms = append(wholeRooms, e.RoomID)
				}
			} else {
				candidates = append(candidates, e.UserID)
			}
		}
		if len(wholeRooms) > 0 {
			members, err := tx.RoomMembers(ctx, wholeRooms)
			if err != nil {
				return err
			}
			candidates = append(candidates, members...)
		}
		for _, u := range candidates {
			if u == userID {
				continue
			}
			if shared[u] {
				changed[u] = true
			} else {
				left[u] = true
			}
		}
		for u := range left {
			delete(changed, u)
		}
		out = ChangesOf(changed, left)
		return nil
	})
	if err != nil {
		return Changes{}, err
	}
	return out, nil
}

func (s *store) RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]RemoteDeviceList, error) {
	out := map[string]RemoteDeviceList{}
	err := s.db.Read(ctx, func(tx Tx) error {
		lists, err := tx.FreshRemoteLists(ctx, userIDs)
		if err != nil || len(lists) == 0 {
			return err
		}
		fresh := make([]string, len(lists))
		for i, l := range lists {
			fresh[i] = l.UserID
			out[l.UserID] = l
		}
		devices, err := tx.RemoteDevicesOf(ctx, fresh)
		if err != nil {
			return err
		}
		for _, d := range devices {
			l := out[d.UserID]
			l.Devices = append(l.Devices, d)
			out[d.UserID] = l
		}
		cs, err := tx.CrossSigningOf(ctx, fresh)
		for u, keys := range cs {
			l := out[u]
			l.MasterKey, l.SelfSigningKey = keys[MasterKey], keys[SelfSigningKey]
			out[u] = l
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading remote device lists: %w", err)
	}
	return out, nil
}
