package devicelists

import (
	"context"
	"errors"
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
}

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
}
