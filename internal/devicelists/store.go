package devicelists

import (
	"context"
	"encoding/json"
	"errors"
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

// Changes are the users whose devices a local user must re-query (Changed)
// or may forget (Left).
type Changes struct {
	Changed []string
	Left    []string
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

// Store is the persistence of the device registry.
type Store interface {
	// PutDevice creates the device or updates it. A token already held by
	// another device moves to this one: the homeserver's latest word wins.
	PutDevice(ctx context.Context, p PutDevice) (d Device, created bool, err error)

	// DeleteDevice turns the device into a tombstone in one transaction:
	// its token stops working, sends serialized on its row see it gone, and
	// its waiters are woken (they find the device gone). It returns
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
}

// Hooks lets tests stop a store at interesting points. Production code leaves
// every field nil.
type Hooks struct {
	// AfterStreamAppend runs inside a transaction that has just taken a
	// device-list stream position, before it commits.
	AfterStreamAppend func(ctx context.Context, kind, userID, roomID string) error
}
