package devicelists

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// Device is one live (or, for tombstones, deleted) local device.
type Device struct {
	UserID      string
	DeviceID    string
	NID         int64 // numeric id of this incarnation; a re-created device gets a new one
	DisplayName string
}

// PutDevice creates or updates a local device.
type PutDevice struct {
	UserID   string
	DeviceID string
	// TokenHash, when set, becomes the device's only access token (an old
	// one is revoked). Nil keeps the current token.
	TokenHash []byte
	// DisplayName, when set, replaces the display name.
	DisplayName *string
	// Keys, when set, replaces the device keys (a DeviceKeys object).
	Keys json.RawMessage
	// FederateDisplayName puts the device's display name into the
	// m.device_list_update sent to other servers (--federation-device-names;
	// off by default, as Synapse's allow_device_name_lookup_over_federation).
	FederateDisplayName bool
}

// Update is the m.device_list_update content of this change, given the
// device's display name and keys after it: the name only when it may
// leave the server.
func (p PutDevice) Update(displayName string, keys json.RawMessage) DeviceUpdate {
	u := DeviceUpdate{DeviceID: p.DeviceID, Keys: keys}
	if p.FederateDisplayName {
		u.DisplayName = displayName
	}
	return u
}

// Membership is one user's membership of a room as the homeserver reported it.
type Membership struct {
	UserID         string
	Membership     string // join, invite, knock, leave or ban
	StreamOrdering int64
	// Local is true for users of this server (they are the ones to wake).
	Local bool
}

// Sharing reports whether a membership counts as sharing the room: clients
// encrypt for joined, invited and knocking users.
func Sharing(membership string) bool {
	return membership == "join" || membership == "invite" || membership == "knock"
}

// SharingChange is a user whose sharing of an encrypted room changed.
type SharingChange struct {
	UserID  string
	Local   bool
	Sharing bool // shares the room now
}

// Tracking is what a room's sharing changes mean for the cache of remote
// users' device lists: a remote user is tracked from the moment they share
// an encrypted room with a local user, and dropped the moment no local user
// shares one with them.
type Tracking struct {
	// AllStart and AllStop: a local user started or stopped sharing, so every
	// remote member of the room is a candidate.
	AllStart, AllStop bool
	// Start and Stop: remote users who started or stopped sharing.
	Start, Stop []string
}

// TrackingOf sorts sharing changes into the candidates to track and untrack.
func TrackingOf(changes []SharingChange) Tracking {
	var t Tracking
	for _, c := range changes {
		switch {
		case c.Local && c.Sharing:
			t.AllStart = true
		case c.Local:
			t.AllStop = true
		case c.Sharing:
			t.Start = append(t.Start, c.UserID)
		default:
			t.Stop = append(t.Stop, c.UserID)
		}
	}
	return t
}

// Changes are the users whose devices a local user must re-query (Changed)
// or may forget (Left).
type Changes struct {
	Changed []string
	Left    []string
}

// ChangesOf builds Changes from sets of user ids: each list sorted, empty
// rather than nil.
func ChangesOf(changed, left map[string]bool) Changes {
	sorted := func(m map[string]bool) []string {
		out := make([]string, 0, len(m))
		for u := range m {
			out = append(out, u)
		}
		slices.Sort(out)
		return out
	}
	return Changes{Changed: sorted(changed), Left: sorted(left)}
}

// StreamState is where the device-list stream stands.
type StreamState struct {
	// Head is the newest committed position.
	Head int64
	// PrunedBelow: positions at or below it were pruned.
	PrunedBelow int64
}

// DeviceKeys is a device's uploaded keys and display name.
type DeviceKeys struct {
	UserID      string
	DeviceID    string
	DisplayName string
	Keys        json.RawMessage // nil when the device uploaded none
}

// Cross-signing key types, as stored and as the internal API names them.
const (
	MasterKey      = "master"
	SelfSigningKey = "self_signing"
	UserSigningKey = "user_signing"
)

// ErrNotFound is returned for a device or token that does not exist.
var ErrNotFound = errors.New("not found")

// ErrTokenInUse is returned by PutDevice when another live device holds the
// access token.
var ErrTokenInUse = errors.New("access token held by another device")

// Store is the persistence of the device registry.
type Store interface {
	// PutDevice creates the device or updates it. A token already held by
	// another live device is refused with ErrTokenInUse, changing nothing:
	// silently taking it from the first device would log that device out
	// behind the homeserver's back, and is always a homeserver bug.
	PutDevice(ctx context.Context, p PutDevice) (d Device, created bool, err error)

	// DeleteDevice turns the device into a tombstone in one transaction:
	// its token stops working, sends serialized on its row see it gone, its
	// one-time and fallback keys are deleted, and its waiters are woken
	// (they find the device gone). It returns
	// ErrNotFound if there is no such live device.
	DeleteDevice(ctx context.Context, userID, deviceID string) (Device, error)

	// DeviceByToken returns the live device holding the token hash.
	DeviceByToken(ctx context.Context, tokenHash []byte) (Device, error)

	// Device returns a live device.
	Device(ctx context.Context, userID, deviceID string) (Device, error)

	// UserDevices returns a user's live devices, ordered by device id.
	UserDevices(ctx context.Context, userID string) ([]Device, error)

	// Tombstones returns up to limit deleted devices whose inbox purge has
	// not finished.
	Tombstones(ctx context.Context, limit int) ([]Device, error)

	// ForgetTombstone removes a deleted device's tombstone once its inbox is
	// purged.
	ForgetTombstone(ctx context.Context, nid int64) error

	// PutCrossSigning stores cross-signing keys (key type -> key object) and
	// reports whether any changed; a change is a device-list change.
	PutCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage) (changed bool, err error)

	// SetRoomEncrypted records that a room is encrypted; the first time is a
	// device-list change for its members.
	SetRoomEncrypted(ctx context.Context, roomID string) (changed bool, err error)

	// SetMemberships applies membership updates of one room, ignoring any
	// older (by stream ordering) than the stored one, and returns how many
	// took effect. In an encrypted room a change of whether a user shares the
	// room is a device-list change.
	SetMemberships(ctx context.Context, roomID string, ms []Membership) (applied int, err error)

	// StreamState returns the head and pruning point of the device-list stream.
	StreamState(ctx context.Context) (StreamState, error)

	// Changes computes the device-list changes a local user sees in the
	// stream positions (from, to].
	Changes(ctx context.Context, userID string, from, to int64) (Changes, error)

	// SharedUsers returns every user who shares an encrypted room with the
	// user, and the user themself.
	SharedUsers(ctx context.Context, userID string) ([]string, error)

	// LocalKeys returns the live devices of the users (all their devices
	// when the list is empty) with their keys, ordered by user and device.
	LocalKeys(ctx context.Context, query map[string][]string) ([]DeviceKeys, error)

	// CrossSigning returns the stored cross-signing keys of the users.
	CrossSigning(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error)

	// PruneStream deletes up to limit stream positions created before
	// cutoff, oldest first, and raises PrunedBelow accordingly.
	PruneStream(ctx context.Context, cutoff time.Time, limit int) (int, error)

	OutboundStore
	RemoteStore
	OneTimeKeyStore
	CrossSigningStore
	DehydratedStore
}

// OutboundStore is what other servers learn of local users' devices: the
// outbox of device-list EDUs that PutDevice, DeleteDevice and
// PutCrossSigning fill (for every server sharing a room, encrypted or not,
// with the user, in the transaction of the change), and the snapshot GET
// /user/devices serves.
type OutboundStore interface {
	// PeekOutbox returns up to limit EDUs queued for destination, lowest
	// position first. Positions of a destination commit in order.
	PeekOutbox(ctx context.Context, destination string, limit int) ([]QueuedEDU, error)
	// OutboxDestinations lists the destinations with EDUs queued.
	OutboxDestinations(ctx context.Context) ([]string, error)
	// DeleteOutbox deletes exactly the EDUs of destination at the
	// positions (never a range) and counts them by EDU type.
	DeleteOutbox(ctx context.Context, destination string, positions []int64) (map[string]int, error)
	// ExpireOutbox deletes up to limit EDUs queued before cutoff, oldest
	// first, except those of a stored federation transaction, and counts
	// them by destination.
	ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]DestinationCount, error)
	// OutboxBacklog counts the queued EDUs and finds the oldest.
	OutboxBacklog(ctx context.Context) (Backlog, error)
	// UserDeviceList reads a local user's devices with keys, cross-signing
	// keys (master and self-signing) and head stream_id in one snapshot.
	UserDeviceList(ctx context.Context, userID string) (UserDeviceList, error)
}

// RemoteStore is the cache of remote users' device lists. Every method
// that changes what local users see takes a device-list stream position and
// wakes the local users sharing a room with the remote user.
type RemoteStore interface {
	// ApplyRemoteUpdate applies an m.device_list_update as
	// DecideRemoteUpdate rules, in one transaction with the state it
	// decides on: an applied update changes the cached device and takes a
	// stream position; an update that cannot be applied marks the user
	// stale (due for a resync now, unless already stale) and remembers its
	// stream_id. A user not tracked yet who shares an encrypted room with a
	// local user becomes tracked (stale); one nobody local shares a room
	// with is ignored.
	ApplyRemoteUpdate(ctx context.Context, u RemoteUpdate) (RemoteOutcome, error)
	// ApplyRemoteSigningKeys replaces the given cross-signing keys (master,
	// self-signing) of a tracked remote user; a change takes a stream
	// position (applied), the same keys again change nothing (ignored).
	// Untracked users are handled as in ApplyRemoteUpdate: the keys are
	// not stored then, the resync fetches them.
	ApplyRemoteSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) (RemoteOutcome, error)
	// ClaimResyncs returns up to limit stale users whose retry time has
	// come, oldest first, and pushes their retry time lease into the
	// future, so that another replica does not fetch them meanwhile.
	ClaimResyncs(ctx context.Context, limit int, lease time.Duration) ([]ResyncJob, error)
	// CompleteResync replaces a tracked user's whole cached list with a
	// snapshot (devices, master and self-signing keys, stream_id) and
	// clears stale unless an update newer than the snapshot was seen since
	// the last resync (StillStale: one more resync is due; the seen
	// stream_id is forgotten, so a bogus one costs one resync, not a loop).
	// A changed list takes one stream position. A user no longer tracked is
	// left alone (Tracked false).
	CompleteResync(ctx context.Context, l RemoteDeviceList) (res ResyncResult, err error)
	// FailResync records a failed resync of a stale user: failures and the
	// time of the next attempt.
	FailResync(ctx context.Context, userID string, failures int, retryIn time.Duration) error
	// ResyncIfUnknownDevice marks a tracked remote user stale, due for a
	// resync now, when the user's cache is fresh and lacks deviceID (a
	// to-device message named it as its sending device), and reports
	// whether it did. A user not tracked, or stale already (its backoff
	// stands), is left alone.
	ResyncIfUnknownDevice(ctx context.Context, userID, deviceID string) (bool, error)
	// RemoteDeviceLists returns the cached lists of those of the users
	// whose cache is fresh and who still share an encrypted room with a
	// local user.
	RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]RemoteDeviceList, error)
	// SweepRemoteUsers checks up to limit tracked users after the given
	// user id (in id order) and drops the cache of those no local user
	// shares an encrypted room with any more. next is where to continue,
	// "" at the end.
	SweepRemoteUsers(ctx context.Context, after string, limit int) (next string, dropped int, err error)
	// RemoteUserCount counts the tracked remote users.
	RemoteUserCount(ctx context.Context) (int, error)

	// RemoteCache reads a remote user's cached list and resync state in
	// one snapshot (admin).
	RemoteCache(ctx context.Context, userID string) (RemoteCacheState, error)
	// ForceResync makes a tracked remote user due for a resync now, its
	// backoff forgotten; false for a user not tracked (admin).
	ForceResync(ctx context.Context, userID string) (bool, error)
}

// OutboxSource names the device-list outbox among the federation sender's
// EDU sources (in stored transactions and feed tokens).
const OutboxSource = "devicelist"

// QueuedEDU is one EDU in the device-list outbox.
type QueuedEDU struct {
	Pos         int64
	Destination string
	Type        string
	EDU         json.RawMessage
	EnqueuedAt  time.Time
}

// DestinationCount is a number of EDUs of one destination.
type DestinationCount struct {
	Destination string
	Count       int
}

// Backlog is what the outbox holds.
type Backlog struct {
	Pending int64
	Oldest  time.Time // zero when empty
}

// UserDeviceList is a local user's device list as other servers see it.
type UserDeviceList struct {
	UserID   string
	StreamID int64
	// Devices are the live devices that have keys, by device id.
	Devices        []DeviceKeys
	MasterKey      json.RawMessage
	SelfSigningKey json.RawMessage
}

// RemoteDeviceList is a remote user's whole device list: a resync snapshot,
// or what the cache holds.
type RemoteDeviceList struct {
	UserID   string
	StreamID int64
	// Devices, by device id; Keys is nil for a device without keys.
	Devices        []DeviceKeys
	MasterKey      json.RawMessage
	SelfSigningKey json.RawMessage
}

// ResyncJob is a remote user due for a resync.
type ResyncJob struct {
	UserID   string
	Failures int
}

// ResyncResult is what CompleteResync did.
type ResyncResult struct {
	// Tracked is false when the user was dropped meanwhile (nothing was
	// written).
	Tracked bool
	// Changed: the list differed from the cache (a stream position).
	Changed bool
	// StillStale: an update newer than the snapshot arrived meanwhile.
	StillStale bool
}

// Hooks lets tests stop a store at interesting points. Production code leaves
// every field nil.
type Hooks struct {
	// AfterStreamAppend runs inside a transaction that has just taken a
	// device-list stream position, before it commits.
	AfterStreamAppend func(ctx context.Context, kind, userID, roomID string) error
	// AfterOutboxQueue runs inside a transaction that has just queued a
	// local user's device-list EDU for other servers (its outbox positions
	// are taken), before it commits.
	AfterOutboxQueue func(ctx context.Context, userID, eduType string) error
}
