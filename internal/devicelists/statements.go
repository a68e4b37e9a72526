package devicelists

import (
	"context"
	"encoding/json"
	"time"

	"github.com/todeviced/todeviced/internal/wakeup"
)

// The device-list store is written once, here (transactions.go), over the
// statements a database offers it (this file), in the manner of River's
// driver and executor: a backend implements DB and Tx, each method one SQL
// statement in its dialect (or, where SQLite's bound-parameter limit asks for
// it, one statement per chunk), and NewStore turns them into a Store. What
// stays in the backends is dialect: SQL, array or JSON encodings, locking,
// the writer's turn and migrations.

// DB is what a database offers the device-list store.
type DB interface {
	// Write runs fn in a write transaction, again if the database aborted
	// an attempt that may be retried (so fn must not keep state across
	// runs). Once it commits, the keys fn returned are woken: on PostgreSQL
	// by a NOTIFY sent inside the transaction (for the other replicas) and
	// at once for this process's waiters, on SQLite in process.
	Write(ctx context.Context, fn func(Tx) ([]wakeup.Key, error)) error
	// Read runs fn in a read-only snapshot: all its statements see the
	// same commits.
	Read(ctx context.Context, fn func(Tx) error) error
	// Queries are the calls of one statement that need no transaction.
	Queries
}

// Queries are the Store calls that are one statement (or one read
// snapshot) in each dialect: the store passes them through. Each is
// documented on Store.
type Queries interface {
	DeviceByToken(ctx context.Context, tokenHash []byte) (Device, error)
	Device(ctx context.Context, userID, deviceID string) (Device, error)
	UserDevices(ctx context.Context, userID string) ([]Device, error)
	Tombstones(ctx context.Context, limit int) ([]Device, error)
	ForgetTombstone(ctx context.Context, nid int64) error
	StreamState(ctx context.Context) (StreamState, error)
	SharedUsers(ctx context.Context, userID string) ([]string, error)
	LocalKeys(ctx context.Context, query map[string][]string) ([]DeviceKeys, error)
	CrossSigning(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error)
	PeekOutbox(ctx context.Context, destination string, limit int) ([]QueuedEDU, error)
	OutboxDestinations(ctx context.Context) ([]string, error)
	DeleteOutbox(ctx context.Context, destination string, positions []int64) (map[string]int, error)
	ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]DestinationCount, error)
	OutboxBacklog(ctx context.Context) (Backlog, error)
	ClaimResyncs(ctx context.Context, limit int, lease time.Duration) ([]ResyncJob, error)
	FailResync(ctx context.Context, userID string, failures int, retryIn time.Duration) error
	ResyncIfUnknownDevice(ctx context.Context, userID, deviceID string) (bool, error)
	RemoteUserCount(ctx context.Context) (int, error)
	KeyCounts(ctx context.Context, nid int64) (KeyCounts, error)
	Dehydrated(ctx context.Context, userID string) (DehydratedDevice, error)
}

// Tx is the statements the store runs inside a transaction DB hands it.
type Tx interface {
	// LockStream orders this transaction among the writers of the
	// device-list stream until it ends, so that positions (and outbox
	// positions of a destination) commit in the order they are taken. Lock
	// order: any devices row first, then the stream, then the rows of the
	// other device-list tables. A database whose writers take turns does
	// nothing.
	LockStream(ctx context.Context) error
	// AppendStream takes the next device-list stream position ("device",
	// "membership" or "encryption"; an empty user or room is NULL).
	AppendStream(ctx context.Context, kind, userID, roomID string) (int64, error)
	// LocalSharers lists the local users sharing an encrypted room with
	// the user.
	LocalSharers(ctx context.Context, userID string) ([]string, error)
	// RoomLocals lists the local members of a room, whatever their
	// membership.
	RoomLocals(ctx context.Context, roomID string) ([]string, error)

	// TokenTaken reports whether another device (live or not) holds the
	// token hash.
	TokenTaken(ctx context.Context, tokenHash []byte, userID, deviceID string) (bool, error)
	// LiveDevice reads (and locks) a live device.
	LiveDevice(ctx context.Context, userID, deviceID string) (StoredDevice, bool, error)
	// UpsertDevice writes PutDevice over the live device old (nil: none
	// was found) and returns the row as written and whether it was
	// inserted. A token held by another device is ErrTokenInUse.
	UpsertDevice(ctx context.Context, p PutDevice, old *StoredDevice) (StoredDevice, bool, error)
	// TombstoneDevice marks a live device deleted and frees its token; no
	// such device is ErrNotFound.
	TombstoneDevice(ctx context.Context, userID, deviceID string) (Device, error)
	// LiveDeviceKeys reads a user's live devices that have keys, by
	// device id.
	LiveDeviceKeys(ctx context.Context, userID string) ([]DeviceKeys, error)
	// Head reads a local user's device-list head (0 when none).
	Head(ctx context.Context, userID string) (int64, error)
	// SetHead stores a local user's device-list head.
	SetHead(ctx context.Context, userID string, pos int64) error
	// RemoteServers lists the servers of the remote users sharing a room,
	// encrypted or not, with the local user, in order.
	RemoteServers(ctx context.Context, userID string) ([]string, error)
	// QueueOutbound queues one EDU for each destination, in order.
	QueueOutbound(ctx context.Context, destinations []string, eduType string, edu []byte) error
	// PutCrossSigningKey stores a key and reports whether it changed.
	PutCrossSigningKey(ctx context.Context, userID, keyType string, key json.RawMessage) (bool, error)
	// CrossSigningOf reads the master and self-signing keys of the users.
	CrossSigningOf(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error)

	// SharedWith lists the user and every user sharing an encrypted room
	// with them.
	SharedWith(ctx context.Context, userID string) ([]string, error)
	// DeviceChanges lists the users among shared (SharedWith userID) whose
	// devices changed in the positions (from, to].
	DeviceChanges(ctx context.Context, userID string, shared []string, from, to int64) ([]string, error)
	// RoomChanges lists the membership and encryption changes in the
	// positions (from, to] of the rooms the user is or was in.
	RoomChanges(ctx context.Context, userID string, from, to int64) ([]StreamEntry, error)
	// RoomMembers lists the members of the rooms, whatever their
	// membership, each once.
	RoomMembers(ctx context.Context, roomIDs []string) ([]string, error)

	// MarkRoomEncrypted records a room's encryption and reports whether
	// it is new.
	MarkRoomEncrypted(ctx context.Context, roomID string) (bool, error)
	// RoomEncrypted reports whether a room is encrypted.
	RoomEncrypted(ctx context.Context, roomID string) (bool, error)
	// UpsertMemberships writes the memberships of a room that are newer
	// (by stream ordering) than the stored ones, and returns those it
	// wrote, by user, with the membership each replaced.
	UpsertMemberships(ctx context.Context, roomID string, ms []Membership) ([]MembershipChange, error)
	// TrackRemote starts tracking (stale, due now) the remote members of an
	// encrypted room shared with a local user: all of them, or only users.
	// Tracked users keep their cache.
	TrackRemote(ctx context.Context, roomID string, all bool, users []string) error
	// UnsharedRemote lists the tracked users among the remote members of a
	// room (all of them, or only users) who share no encrypted room with a
	// local user.
	UnsharedRemote(ctx context.Context, roomID string, all bool, users []string) ([]string, error)
	// DropRemote forgets the cached lists of the users.
	DropRemote(ctx context.Context, users []string) error
	// RemoteUsersAfter reads up to limit tracked users after the user id,
	// in id order, with whether each shares an encrypted room with a local
	// user.
	RemoteUsersAfter(ctx context.Context, after string, limit int) ([]TrackedUser, error)

	// RemoteState reads (and locks) a tracked user's state.
	RemoteState(ctx context.Context, userID string) (RemoteState, bool, error)
	// AdminRemoteState reads a tracked user's whole resync state into st
	// (without locking), and whether the user is tracked.
	AdminRemoteState(ctx context.Context, userID string, st *RemoteCacheState) (bool, error)
	// ForceResync makes a tracked user stale, due now, failures zero; false
	// for a user not tracked.
	ForceResync(ctx context.Context, userID string) (bool, error)
	// RemoteSeen reads (and locks) the newest stream_id seen of a tracked
	// user since the last resync.
	RemoteSeen(ctx context.Context, userID string) (int64, bool, error)
	// TrackIfShared starts tracking an untracked user who shares an
	// encrypted room with a local user (stale, due now, seen as the newest
	// stream_id seen) and reports whether it did.
	TrackIfShared(ctx context.Context, userID string, seen int64) (bool, error)
	// MarkStale makes a resync due (now, unless one is due already) and
	// remembers the stream_id seen.
	MarkStale(ctx context.Context, userID string, seen int64) error
	// UpsertRemoteDevice stores a remote device.
	UpsertRemoteDevice(ctx context.Context, d DeviceKeys) error
	// DeleteRemoteDevice forgets a remote device.
	DeleteRemoteDevice(ctx context.Context, userID, deviceID string) error
	// SetRemoteApplied stores a tracked user's stream_id and the ids
	// applied.
	SetRemoteApplied(ctx context.Context, userID string, streamID int64, applied []int64) error
	// FreshRemoteLists returns, of the users, those whose cache is fresh
	// and who share an encrypted room with a local user, with their
	// stream_id (no devices).
	FreshRemoteLists(ctx context.Context, userIDs []string) ([]RemoteDeviceList, error)
	// RemoteDevicesOf reads the cached devices of the users, by user and
	// device id.
	RemoteDevicesOf(ctx context.Context, userIDs []string) ([]DeviceKeys, error)
	// RemoteDevices reads a user's cached devices, by device id.
	RemoteDevices(ctx context.Context, userID string) ([]DeviceKeys, error)
	// ReplaceRemoteList writes a snapshot over the cached devices and
	// master and self-signing keys.
	ReplaceRemoteList(ctx context.Context, l RemoteDeviceList) error
	// FinishResync records a completed resync: the snapshot's stream_id,
	// no ids applied since, and stale (with its retry time and failures
	// kept) or not.
	FinishResync(ctx context.Context, userID string, streamID int64, stale bool) error

	// PruneOldest deletes up to limit of the oldest stream positions
	// created before cutoff and returns how many, and the highest.
	PruneOldest(ctx context.Context, cutoff time.Time, limit int) (n int, top int64, err error)
	// RaisePrunedBelow raises the pruning point to pos.
	RaisePrunedBelow(ctx context.Context, pos int64) error

	KeyTx
	// DehydratedTx are the statements of dehydrated devices
	// (dehydrated.go).
	DehydratedTx
	// CrossSigningTx are the statements of uploaded cross-signing keys and
	// signatures (crosssigning.go).
	CrossSigningTx
}

// StoredDevice is a local device's row as PutDevice reads and writes it.
type StoredDevice struct {
	NID         int64
	DisplayName *string // nil: none
	Keys        []byte  // nil: none
	// Dehydrated: the user's dehydrated device (dehydrated.go).
	Dehydrated bool
}

// MembershipChange is a membership UpsertMemberships wrote.
type MembershipChange struct {
	UserID string
	// Before is the membership replaced, "" when there was none.
	Before string
	Now    string
}

// StreamEntry is a membership or encryption change in the device-list
// stream.
type StreamEntry struct {
	Kind   string // "membership" or "encryption"
	UserID string // "" for encryption
	RoomID string
}

// TrackedUser is a tracked remote user as the sweep sees it.
type TrackedUser struct {
	UserID string
	Shared bool
}
