// Package devicelists owns local devices (their access tokens, stored only
// as hashes, their keys and their deletion), cross-signing keys,
// encrypted-room membership of local and remote users and the device-list
// stream that /sync's device_lists are computed from. Its federation half
// (Federation) tells other servers about local users' devices through an
// outbox of m.device_list_update and m.signing_key_update EDUs, keeps a
// cache of remote users' device lists fresh from their updates and resyncs,
// and answers other servers' device and key queries.
package devicelists

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Limits on identifiers the internal API accepts.
const (
	MaxDeviceIDBytes    = 255
	MaxDisplayNameBytes = 1024
	// tokenPrefix makes todeviced's own tokens recognisable in logs and
	// secret scanners; the homeserver's tokens are taken as they are.
	tokenPrefix = "tdv_"
)

// Service is the devices and device-lists component.
type Service struct {
	store      Store
	serverName string
	log        *slog.Logger
	m          *Metrics
	remote     RemoteKeys
	fed        *Federation // nil while federation is off
	upstream   *Upstream
	// tokens remembers authenticated tokens (tokencache.go).
	tokens *tokenCache
	// federationNames shows display names to other servers.
	federationNames bool
}

// New returns the component for the local devices of serverName.
func New(store Store, serverName string, log *slog.Logger, m *Metrics) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Service{store: store, serverName: serverName, log: log, m: m, tokens: newTokenCache(TokenCacheSize)}
}

// SetFederationDeviceNames decides whether other servers see local devices'
// display names: in m.device_list_update EDUs and in the answers of GET
// /user/devices and POST /user/keys/query (also when a homeserver serves
// those through the internal API). Off by default: a display name often
// says who owns a device or where it is ("Alice's work laptop"), and
// clients do not need it to encrypt, so, like Synapse's default, it stays
// on this server unless the operator opts in.
func (r *Service) SetFederationDeviceNames(show bool) { r.federationNames = show }

// HashToken is how tokens are stored: a SHA-256 digest. Tokens are long random
// strings, so a fast hash is enough (no password stretching needed).
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// NewToken returns a fresh random access token.
func NewToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// CheckLocalDevice validates a local user id and device id.
func (r *Service) CheckLocalDevice(userID, deviceID string) error {
	if _, err := r.requireLocal(userID); err != nil {
		return err
	}
	if deviceID == "" || len(deviceID) > MaxDeviceIDBytes {
		return matrix.Errorf(matrix.InvalidParam, "Device id must be 1 to %d bytes.", MaxDeviceIDBytes)
	}
	if err := matrix.ValidateDeviceID(deviceID); err != nil {
		return matrix.Errorf(matrix.InvalidParam, "Invalid device id %q: %v.", matrix.Quote(deviceID), err)
	}
	return nil
}

// PutDevice creates or updates a device; token, when not empty, becomes its
// access token; keys, when set, are its DeviceKeys.
func (r *Service) PutDevice(ctx context.Context, userID, deviceID, token string, displayName *string, keys json.RawMessage) (Device, bool, error) {
	if err := r.CheckLocalDevice(userID, deviceID); err != nil {
		return Device{}, false, err
	}
	if displayName != nil && len(*displayName) > MaxDisplayNameBytes {
		return Device{}, false, matrix.Errorf(matrix.TooLarge, "Display name is longer than %d bytes.", MaxDisplayNameBytes)
	}
	if displayName != nil {
		if err := matrix.ValidateText(*displayName); err != nil {
			return Device{}, false, matrix.Errorf(matrix.InvalidParam, "Display name %v.", err)
		}
	}
	p := PutDevice{UserID: userID, DeviceID: deviceID, DisplayName: displayName, FederateDisplayName: r.federationNames}
	if len(keys) > 0 && string(keys) != "null" {
		k, err := checkKeyObject("keys", keys, userID, deviceID)
		if err != nil {
			return Device{}, false, err
		}
		p.Keys = k
	}
	if token != "" {
		p.TokenHash = HashToken(token)
	}
	d, created, err := r.store.PutDevice(ctx, p)
	if errors.Is(err, ErrTokenInUse) {
		return Device{}, false, matrix.ErrorfStatus(http.StatusConflict, matrix.InvalidParam,
			"This access_token is held by another device: delete that device or give it another token first.")
	}
	if err != nil {
		return Device{}, false, fmt.Errorf("storing device: %w", err)
	}
	if created {
		r.m.changes.WithLabelValues(ChangeNewDevice).Inc()
		r.log.InfoContext(ctx, "device created", "user_id", userID, "device_id", deviceID, "device_nid", d.NID)
	} else if p.Keys != nil || displayName != nil {
		r.m.changes.WithLabelValues(ChangeDeviceUpdate).Inc()
	}
	return d, created, nil
}

// DeleteDevice deletes a device. It returns the tombstone whose inbox must
// now be purged, or ErrNotFound.
func (r *Service) DeleteDevice(ctx context.Context, userID, deviceID string) (Device, error) {
	if err := r.CheckLocalDevice(userID, deviceID); err != nil {
		return Device{}, err
	}
	d, err := r.store.DeleteDevice(ctx, userID, deviceID)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Device{}, err
		}
		return Device{}, fmt.Errorf("deleting device: %w", err)
	}
	r.m.changes.WithLabelValues(ChangeDeletedDevice).Inc()
	r.log.InfoContext(ctx, "device deleted", "user_id", userID, "device_id", deviceID, "device_nid", d.NID)
	return d, nil
}

// Authenticate returns the live device holding token, or ErrNotFound. Tokens
// todeviced holds itself are checked first, and remembered (CachedAuth);
// with an upstream configured, any other token is checked with the
// homeserver.
func (r *Service) Authenticate(ctx context.Context, token string) (Auth, error) {
	hash := HashToken(token)
	d, err := r.store.DeviceByToken(ctx, hash)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			if r.upstream != nil {
				d, err := r.authenticateUpstream(ctx, token)
				return Auth{Device: d}, err
			}
			return Auth{}, err
		}
		return Auth{}, fmt.Errorf("looking up access token: %w", err)
	}
	r.tokens.put(hash, d)
	return Auth{Device: d, Guard: hash}, nil
}

// CachedAuth returns, without a database read, the device token named when
// Authenticate last found it on this replica, marked Unverified: the token
// may have been revoked since, here or on another replica. Only a caller
// that guards everything it does with the Guard may act on it (a /sync:
// inbox.SyncQuery.TokenHash; a sendToDevice: inbox.SenderGuard), and
// ForgetToken when the guard fails. Tokens
// the homeserver vouched for are never remembered: no guard could check
// them.
func (r *Service) CachedAuth(token string) (Auth, bool) {
	hash := HashToken(token)
	d, ok := r.tokens.get(hash)
	if !ok {
		return Auth{}, false
	}
	return Auth{Device: d, Guard: hash, Unverified: true}, true
}

// ForgetToken drops what CachedAuth remembers of a token: a guard found it
// no longer names that device.
func (r *Service) ForgetToken(hash []byte) { r.tokens.forget(hash) }

// Device returns a live device or ErrNotFound.
func (r *Service) Device(ctx context.Context, userID, deviceID string) (Device, error) {
	return r.store.Device(ctx, userID, deviceID)
}

// Tombstones returns deleted devices whose inbox purge is pending.
func (r *Service) Tombstones(ctx context.Context, limit int) ([]Device, error) {
	return r.store.Tombstones(ctx, limit)
}

// ForgetTombstone removes a purged device's tombstone.
func (r *Service) ForgetTombstone(ctx context.Context, nid int64) error {
	return r.store.ForgetTombstone(ctx, nid)
}
