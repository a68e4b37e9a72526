package devicelists

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// The key half of end-to-end encryption, as stored: one-time keys and
// fallback keys of local devices. The use cases are written here once; the
// statements (KeyTx) are in internal/storage/sqlstmt for both dialects,
// except the claim, whose choice of row differs (SKIP LOCKED on PostgreSQL).

// OneTimeKey is one uploaded one-time or fallback key.
type OneTimeKey struct {
	Algorithm string
	KeyID     string
	// Key is the key object (or string) exactly as uploaded, compact.
	Key json.RawMessage
}

// FullID is the key's "algorithm:key_id", as the API names it.
func (k OneTimeKey) FullID() string { return k.Algorithm + ":" + k.KeyID }

// KeyUpload is what one /keys/upload stores for a live device.
type KeyUpload struct {
	UserID   string
	DeviceID string
	// DeviceKeys, when set, replaces the device's keys (a DeviceKeys
	// object), through the device-key path of PutDevice: a change is a
	// device-list change, the same keys again change nothing.
	DeviceKeys json.RawMessage
	// FederateDisplayName is PutDevice's, for the device-list update.
	FederateDisplayName bool
	// OneTimeKeys are added; one already stored under the same id with the
	// same content is ignored, with other content refused.
	OneTimeKeys []OneTimeKey
	// FallbackKeys replace the device's fallback key of their algorithm
	// (unused again); the same key again keeps its used flag.
	FallbackKeys []OneTimeKey
}

// KeyCounts are a device's one-time-key counts, as /sync and /keys/upload
// report them.
type KeyCounts struct {
	// OneTimeKeys counts the unclaimed one-time keys by algorithm.
	OneTimeKeys map[string]int
	// UnusedFallback lists the algorithms with an unused fallback key,
	// sorted.
	UnusedFallback []string
}

// KeyClaim asks for one key of a device.
type KeyClaim struct {
	UserID    string
	DeviceID  string
	Algorithm string
}

// ClaimedKey is a key handed out for a KeyClaim.
type ClaimedKey struct {
	KeyClaim
	NID int64
	Key OneTimeKey
	// Fallback is true when the device had no one-time key of the
	// algorithm left and its fallback key was handed out.
	Fallback bool
}

// OneTimeKeyStore is the persistence of one-time and fallback keys.
type OneTimeKeyStore interface {
	// UploadKeys stores a live device's device keys, one-time and
	// fallback keys in one transaction and returns its counts after it,
	// and whether the device keys changed. A one-time key id already
	// stored with other content refuses the whole upload (M_INVALID_PARAM,
	// as Synapse does); a device not live is ErrNotFound. Stored keys
	// wake the device.
	UploadKeys(ctx context.Context, u KeyUpload) (KeyCounts, bool, error)
	// ClaimKeys hands out one key per claim of a live device: a one-time
	// key of the algorithm, deleted as it is handed out, so that each is
	// handed out exactly once whoever claims concurrently; failing that,
	// the device's fallback key of the algorithm, marked used (it stays
	// available). A claim with neither gets nothing. Each device a key was
	// handed out of is woken (its counts changed).
	ClaimKeys(ctx context.Context, claims []KeyClaim) ([]ClaimedKey, error)
	// KeyCounts reads a device's counts (zero values for a device that is
	// not live).
	KeyCounts(ctx context.Context, nid int64) (KeyCounts, error)
}

// KeyTx are the statements of the key use cases, run inside a
// transaction DB hands them (part of Tx).
type KeyTx interface {
	// StoredOneTimeKeys reads those of the device's one-time keys whose
	// "algorithm:key_id" is among ids, by that id.
	StoredOneTimeKeys(ctx context.Context, nid int64, ids []string) (map[string]json.RawMessage, error)
	// InsertOneTimeKey stores a one-time key unless its id is stored, and
	// reports whether it did.
	InsertOneTimeKey(ctx context.Context, userID string, nid int64, k OneTimeKey) (bool, error)
	// PutFallbackKey stores the device's fallback key of the algorithm,
	// unused, unless the same key (id and content) is stored, and reports
	// whether it wrote.
	PutFallbackKey(ctx context.Context, userID string, nid int64, k OneTimeKey) (bool, error)
	// ClaimOneTimeKey deletes and returns one one-time key of the
	// algorithm of the live device (the lowest key id not being claimed
	// by a concurrent transaction); found is false when none is left.
	ClaimOneTimeKey(ctx context.Context, c KeyClaim) (nid int64, k OneTimeKey, found bool, err error)
	// ClaimFallbackKey marks the live device's fallback key of the
	// algorithm used and returns it; found is false when it has none.
	ClaimFallbackKey(ctx context.Context, c KeyClaim) (nid int64, k OneTimeKey, found bool, err error)
	// CountOneTimeKeys counts a device's one-time keys by algorithm.
	CountOneTimeKeys(ctx context.Context, nid int64) (map[string]int, error)
	// UnusedFallbackKeys lists the algorithms of a device's unused
	// fallback keys, sorted.
	UnusedFallbackKeys(ctx context.Context, nid int64) ([]string, error)
	// DeleteDeviceKeys deletes a device's one-time and fallback keys.
	DeleteDeviceKeys(ctx context.Context, nid int64) error
}

// keyCounts reads a device's counts inside a transaction.
func keyCounts(ctx context.Context, tx Tx, nid int64) (KeyCounts, error) {
	otk, err := tx.CountOneTimeKeys(ctx, nid)
	if err != nil {
		return KeyCounts{}, err
	}
	fb, err := tx.UnusedFallbackKeys(ctx, nid)
	if err != nil {
		return KeyCounts{}, err
	}
	if otk == nil {
		otk = map[string]int{}
	}
	if fb == nil {
		fb = []string{}
	}
	return KeyCounts{OneTimeKeys: otk, UnusedFallback: fb}, nil
}

// UploadKeys locks the device row first (the lock order of every device
// write): a deletion racing the upload either comes first (ErrNotFound)
// or deletes the keys stored here. New device keys are written as
// PutDevice writes them, in the same transaction, so that a refused
// upload stores nothing.
func (s *store) UploadKeys(ctx context.Context, u KeyUpload) (KeyCounts, bool, error) {
	otks := slices.Clone(u.OneTimeKeys)
	slices.SortFunc(otks, func(a, b OneTimeKey) int { return cmp.Compare(a.FullID(), b.FullID()) })
	ids := make([]string, len(otks))
	for i, k := range otks {
		ids[i] = k.FullID()
	}
	var counts KeyCounts
	var keysChanged bool
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		keysChanged = false
		dev, live, err := tx.LiveDevice(ctx, u.UserID, u.DeviceID)
		if err != nil {
			return nil, err
		}
		if !live {
			return nil, ErrNotFound
		}
		changed := false
		if len(otks) > 0 {
			stored, err := tx.StoredOneTimeKeys(ctx, dev.NID, ids)
			if err != nil {
				return nil, err
			}
			for _, k := range otks {
				if old, ok := stored[k.FullID()]; ok {
					if !bytes.Equal(old, k.Key) {
						return nil, matrix.Errorf(matrix.InvalidParam, "One-time key %s already exists with other content.", matrix.Quote(k.FullID()))
					}
					continue
				}
				n, err := tx.InsertOneTimeKey(ctx, u.UserID, dev.NID, k)
				if err != nil {
					return nil, err
				}
				changed = changed || n
			}
		}
		for _, k := range u.FallbackKeys {
			n, err := tx.PutFallbackKey(ctx, u.UserID, dev.NID, k)
			if err != nil {
				return nil, err
			}
			changed = changed || n
		}
		if counts, err = keyCounts(ctx, tx, dev.NID); err != nil {
			return nil, err
		}
		var wake []wakeup.Key
		if changed {
			wake = append(wake, wakeup.DeviceKey(dev.NID))
		}
		if u.DeviceKeys != nil && !bytes.Equal(dev.Keys, u.DeviceKeys) {
			p := PutDevice{UserID: u.UserID, DeviceID: u.DeviceID, Keys: u.DeviceKeys, FederateDisplayName: u.FederateDisplayName}
			now, _, err := tx.UpsertDevice(ctx, p, &dev)
			if err != nil {
				return nil, err
			}
			name := ""
			if now.DisplayName != nil {
				name = *now.DisplayName
			}
			out, err := s.localDeviceChanged(ctx, tx, u.UserID, p.Update(name, now.Keys))
			if err != nil {
				return nil, err
			}
			keysChanged = true
			wake = append(wake, out...)
		}
		return wake, nil
	})
	if err != nil {
		return KeyCounts{}, false, err
	}
	return counts, keysChanged, nil
}

// ClaimKeys claims in a fixed order (user, device, algorithm), so that two
// claimers locking fallback rows cannot deadlock.
func (s *store) ClaimKeys(ctx context.Context, claims []KeyClaim) ([]ClaimedKey, error) {
	claims = slices.Clone(claims)
	slices.SortFunc(claims, func(a, b KeyClaim) int {
		return cmp.Or(cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.DeviceID, b.DeviceID), cmp.Compare(a.Algorithm, b.Algorithm))
	})
	var out []ClaimedKey
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		out = out[:0]
		var wake []wakeup.Key
		for _, c := range claims {
			nid, k, found, err := tx.ClaimOneTimeKey(ctx, c)
			if err != nil {
				return nil, fmt.Errorf("claiming a one-time key: %w", err)
			}
			fallback := false
			if !found {
				if nid, k, found, err = tx.ClaimFallbackKey(ctx, c); err != nil {
					return nil, fmt.Errorf("claiming a fallback key: %w", err)
				}
				fallback = true
			}
			if !found {
				out = append(out, ClaimedKey{KeyClaim: c})
				continue
			}
			out = append(out, ClaimedKey{KeyClaim: c, NID: nid, Key: k, Fallback: fallback})
			wake = append(wake, wakeup.DeviceKey(nid))
		}
		return wake, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
