package devicelists

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Dehydrated devices (MSC3814, unstable prefix org.matrix.msc3814.v1), as
// Synapse implements them: a user keeps at most one device without an
// access token whose private keys, encrypted by the client, wait on the
// server as device_data. Others encrypt for it like for any device (it has
// keys and is in the user's device list), its to-device messages wait in
// its inbox, and the owner's next new device reads them (EventsOf in
// devicesync's terms) before uploading a new dehydrated device, which
// replaces the old one: its row, keys and inbox go as a deleted device's.

// MaxDehydratedDataBytes bounds an uploaded device_data object (a pickled
// Olm account with its one-time keys is a few KiB).
const MaxDehydratedDataBytes = 64 << 10

// DehydratedEventsLimit is the most to-device messages one call of the
// dehydrated device's events returns (Synapse's limit).
const DehydratedEventsLimit = 100

// DehydratedUpload is the body of PUT …/dehydrated_device.
type DehydratedUpload struct {
	DeviceID    string          `json:"device_id"`
	DeviceData  json.RawMessage `json:"device_data"`
	DisplayName *string         `json:"initial_device_display_name"`
	KeysUpload
}

// DehydratedDevice is a user's live dehydrated device and its data.
type DehydratedDevice struct {
	Device
	// Data is device_data as uploaded (a JSON object).
	Data json.RawMessage
}

// DehydratedPut is what one upload of a dehydrated device stores.
type DehydratedPut struct {
	UserID      string
	DeviceID    string
	DisplayName *string
	Data        json.RawMessage
	// DeviceKeys is the checked DeviceKeys object.
	DeviceKeys   json.RawMessage
	OneTimeKeys  []OneTimeKey
	FallbackKeys []OneTimeKey
	// FederateDisplayName is PutDevice's.
	FederateDisplayName bool
}

// ErrNotDehydrated is PutDehydrated's answer for a device id that is a
// live device of the user other than their dehydrated one.
var ErrNotDehydrated = errors.New("the device id is a device that is not dehydrated")

// ErrDehydratedRace is what SetDehydrated returns when a concurrent upload
// created the user's dehydrated device first: the upload runs again and
// replaces it.
var ErrDehydratedRace = errors.New("another dehydrated device was stored concurrently")

// DehydratedStore is the persistence of dehydrated devices.
type DehydratedStore interface {
	// PutDehydrated stores a user's dehydrated device in one transaction:
	// the old dehydrated device (whatever its id) is deleted as
	// DeleteDevice deletes a device, then the new one is created, without
	// a token, with its device data and keys. Both are device-list
	// changes. A device id that is a live device of the user other than
	// the dehydrated one is ErrNotDehydrated, changing nothing. It returns
	// the new device and the replaced one (nil when there was none), whose
	// inbox must now be purged.
	PutDehydrated(ctx context.Context, p DehydratedPut) (Device, *Device, error)
	// DeleteDehydrated deletes the user's dehydrated device, as
	// DeleteDevice; ErrNotFound when they have none.
	DeleteDehydrated(ctx context.Context, userID string) (Device, error)
	// Dehydrated reads the user's live dehydrated device; ErrNotFound when
	// they have none.
	Dehydrated(ctx context.Context, userID string) (DehydratedDevice, error)
}

// DehydratedTx are the statements of the dehydrated-device use cases (part
// of Tx).
type DehydratedTx interface {
	// LockDehydrated reads (and locks) the user's live dehydrated device.
	LockDehydrated(ctx context.Context, userID string) (Device, bool, error)
	// SetDehydrated makes the live device nid the user's dehydrated
	// device, with its data; ErrDehydratedRace when the user has another.
	SetDehydrated(ctx context.Context, nid int64, data json.RawMessage) error
}

// deleteDevice tombstones a live device, deletes its keys and records the
// change; it returns the tombstone and whom to wake.
func (s *store) deleteDevice(ctx context.Context, tx Tx, userID, deviceID string) (Device, []wakeup.Key, error) {
	d, err := tx.TombstoneDevice(ctx, userID, deviceID)
	if err != nil {
		return Device{}, nil, err
	}
	if err := tx.DeleteDeviceKeys(ctx, d.NID); err != nil {
		return Device{}, nil, err
	}
	wake, err := s.localDeviceChanged(ctx, tx, userID, DeviceUpdate{DeviceID: deviceID, Deleted: true})
	if err != nil {
		return Device{}, nil, err
	}
	return d, append(wake, wakeup.DeviceKey(d.NID)), nil
}

// PutDehydrated locks the old dehydrated row and the row of the new id
// (devices first, as every device write), then deletes, creates and
// stores the keys. Two first uploads racing on PostgreSQL both find no
// old device; the second stops at the unique index and runs again, now
// replacing the first.
func (s *store) PutDehydrated(ctx context.Context, p DehydratedPut) (Device, *Device, error) {
	otks := slices.Clone(p.OneTimeKeys)
	slices.SortFunc(otks, func(a, b OneTimeKey) int { return cmp.Compare(a.FullID(), b.FullID()) })
	fbs := slices.Clone(p.FallbackKeys)
	slices.SortFunc(fbs, func(a, b OneTimeKey) int { return cmp.Compare(a.FullID(), b.FullID()) })
	var d Device
	var replaced *Device
	var err error
	// Each round of racing uploads commits one of them, so n racers need
	// at most n rounds.
	for range 10 {
		err = s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
			d, replaced = Device{UserID: p.UserID, DeviceID: p.DeviceID}, nil
			old, found, err := tx.LockDehydrated(ctx, p.UserID)
			if err != nil {
				return nil, err
			}
			live, existed, err := tx.LiveDevice(ctx, p.UserID, p.DeviceID)
			if err != nil {
				return nil, err
			}
			if existed && !live.Dehydrated {
				return nil, ErrNotDehydrated
			}
			var wake []wakeup.Key
			if found {
				gone, w, err := s.deleteDevice(ctx, tx, p.UserID, old.DeviceID)
				if err != nil {
					return nil, err
				}
				replaced, wake = &gone, w
			}
			put := PutDevice{UserID: p.UserID, DeviceID: p.DeviceID, DisplayName: p.DisplayName,
				Keys: p.DeviceKeys, FederateDisplayName: p.FederateDisplayName}
			now, created, err := tx.UpsertDevice(ctx, put, nil)
			if err != nil {
				return nil, err
			}
			if !created {
				// A concurrent upload of the same id committed first.
				return nil, ErrDehydratedRace
			}
			d.NID = now.NID
			if now.DisplayName != nil {
				d.DisplayName = *now.DisplayName
			}
			if err := tx.SetDehydrated(ctx, now.NID, p.Data); err != nil {
				return nil, err
			}
			for _, k := range otks {
				if _, err := tx.InsertOneTimeKey(ctx, p.UserID, now.NID, k); err != nil {
					return nil, err
				}
			}
			for _, k := range fbs {
				if _, err := tx.PutFallbackKey(ctx, p.UserID, now.NID, k); err != nil {
					return nil, err
				}
			}
			out, err := s.localDeviceChanged(ctx, tx, p.UserID, put.Update(d.DisplayName, now.Keys))
			return append(wake, out...), err
		})
		if !errors.Is(err, ErrDehydratedRace) {
			break
		}
	}
	if err != nil {
		return Device{}, nil, err
	}
	return d, replaced, nil
}

func (s *store) DeleteDehydrated(ctx context.Context, userID string) (Device, error) {
	var d Device
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		old, found, err := tx.LockDehydrated(ctx, userID)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, ErrNotFound
		}
		var wake []wakeup.Key
		d, wake, err = s.deleteDevice(ctx, tx, userID, old.DeviceID)
		return wake, err
	})
	if err != nil {
		return Device{}, err
	}
	return d, nil
}

// checkDehydratedData checks device_data: a bounded object with a string
// algorithm (as Synapse's model), kept compact and otherwise as given (only
// its owner reads it back).
func checkDehydratedData(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, matrix.Errorf(matrix.MissingParam, "Missing 'device_data'.")
	}
	if len(raw) > MaxDehydratedDataBytes {
		return nil, matrix.Errorf(matrix.TooLarge, "device_data is larger than %d bytes.", MaxDehydratedDataBytes)
	}
	if err := matrix.CheckJSON(raw, matrix.MaxContentDepth); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "device_data is not acceptable JSON: %v.", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, matrix.Errorf(matrix.BadJSON, "device_data must be a JSON object.")
	}
	var alg string
	if err := json.Unmarshal(obj["algorithm"], &alg); err != nil || alg == "" {
		return nil, matrix.Errorf(matrix.BadJSON, "device_data must have a string 'algorithm'.")
	}
	if err := matrix.ValidateText(alg); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "device_data's algorithm %v.", err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "device_data is malformed: %v.", err)
	}
	return buf.Bytes(), nil
}

// PutDehydrated stores the user's dehydrated device (PUT
// …/dehydrated_device): its device keys, one-time and fallback keys pass
// /keys/upload's checks (each signed by the device's own ed25519 key,
// device_keys required), and it replaces the user's old dehydrated device.
// It returns the new device and the replaced one (nil when none), whose
// inbox must be purged.
func (r *Service) PutDehydrated(ctx context.Context, userID string, u DehydratedUpload) (Device, *Device, error) {
	if u.DeviceID == "" {
		return Device{}, nil, matrix.Errorf(matrix.MissingParam, "Missing 'device_id'.")
	}
	if err := r.CheckLocalDevice(userID, u.DeviceID); err != nil {
		return Device{}, nil, err
	}
	data, err := checkDehydratedData(u.DeviceData)
	if err != nil {
		return Device{}, nil, err
	}
	if u.DisplayName != nil {
		if len(*u.DisplayName) > MaxDisplayNameBytes {
			return Device{}, nil, matrix.Errorf(matrix.TooLarge, "Display name is longer than %d bytes.", MaxDisplayNameBytes)
		}
		if err := matrix.ValidateText(*u.DisplayName); err != nil {
			return Device{}, nil, matrix.Errorf(matrix.InvalidParam, "Display name %v.", err)
		}
	}
	if len(u.DeviceKeys) == 0 || string(u.DeviceKeys) == "null" {
		return Device{}, nil, matrix.Errorf(matrix.MissingParam, "Device key(s) not found, these must be provided.")
	}
	if len(u.OneTimeKeys) > MaxOneTimeKeysPerUpload {
		return Device{}, nil, matrix.Errorf(matrix.TooLarge, "More than %d one-time keys in one upload.", MaxOneTimeKeysPerUpload)
	}
	var pub ed25519.PublicKey
	p := DehydratedPut{UserID: userID, DeviceID: u.DeviceID, DisplayName: u.DisplayName, Data: data,
		FederateDisplayName: r.federationNames}
	if p.DeviceKeys, pub, err = checkDeviceKeys(u.DeviceKeys, userID, u.DeviceID); err != nil {
		return Device{}, nil, err
	}
	if p.OneTimeKeys, err = checkOneTimeKeys("one_time_keys", u.OneTimeKeys, userID, u.DeviceID, pub); err != nil {
		return Device{}, nil, err
	}
	if p.FallbackKeys, err = checkOneTimeKeys("fallback_keys", u.FallbackKeys, userID, u.DeviceID, pub); err != nil {
		return Device{}, nil, err
	}
	algs := map[string]bool{}
	for _, k := range p.FallbackKeys {
		if algs[k.Algorithm] {
			return Device{}, nil, matrix.Errorf(matrix.InvalidParam, "fallback_keys has more than one %s key.", matrix.Quote(k.Algorithm))
		}
		algs[k.Algorithm] = true
	}
	d, replaced, err := r.store.PutDehydrated(ctx, p)
	if errors.Is(err, ErrNotDehydrated) {
		return Device{}, nil, matrix.Errorf(matrix.InvalidParam,
			"Device %s is one of your devices and not a dehydrated one: choose another device_id.", matrix.Quote(u.DeviceID))
	}
	if err != nil {
		return Device{}, nil, fmt.Errorf("storing dehydrated device: %w", err)
	}
	if replaced != nil {
		r.m.changes.WithLabelValues(ChangeDeletedDevice).Inc()
		r.log.InfoContext(ctx, "dehydrated device replaced", "user_id", userID, "device_id", replaced.DeviceID, "device_nid", replaced.NID)
	}
	r.m.changes.WithLabelValues(ChangeNewDevice).Inc()
	r.m.keysUploaded.WithLabelValues(KeyOneTime).Add(float64(len(p.OneTimeKeys)))
	r.m.keysUploaded.WithLabelValues(KeyFallback).Add(float64(len(p.FallbackKeys)))
	r.log.InfoContext(ctx, "dehydrated device stored", "user_id", userID, "device_id", d.DeviceID, "device_nid", d.NID)
	return d, replaced, nil
}

// Dehydrated returns the user's dehydrated device, or 404 M_NOT_FOUND.
func (r *Service) Dehydrated(ctx context.Context, userID string) (DehydratedDevice, error) {
	if _, err := r.requireLocal(userID); err != nil {
		return DehydratedDevice{}, err
	}
	d, err := r.store.Dehydrated(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		return DehydratedDevice{}, matrix.Errorf(matrix.NotFound, "No dehydrated device available.")
	}
	if err != nil {
		return DehydratedDevice{}, fmt.Errorf("reading dehydrated device: %w", err)
	}
	return d, nil
}

// DeleteDehydrated deletes the user's dehydrated device (its inbox must
// then be purged), or answers 404 M_NOT_FOUND.
func (r *Service) DeleteDehydrated(ctx context.Context, userID string) (Device, error) {
	if _, err := r.requireLocal(userID); err != nil {
		return Device{}, err
	}
	d, err := r.store.DeleteDehydrated(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		return Device{}, matrix.Errorf(matrix.NotFound, "No dehydrated device available.")
	}
	if err != nil {
		return Device{}, fmt.Errorf("deleting dehydrated device: %w", err)
	}
	r.m.changes.WithLabelValues(ChangeDeletedDevice).Inc()
	r.log.InfoContext(ctx, "dehydrated device deleted", "user_id", userID, "device_id", d.DeviceID, "device_nid", d.NID)
	return d, nil
}

// DehydratedForEvents returns the user's dehydrated device when it is
// deviceID, for reading its messages: 403 M_FORBIDDEN when the user has no
// dehydrated device or another one (as Synapse answers).
func (r *Service) DehydratedForEvents(ctx context.Context, userID, deviceID string) (Device, error) {
	if _, err := r.requireLocal(userID); err != nil {
		return Device{}, err
	}
	d, err := r.store.Dehydrated(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		return Device{}, matrix.ErrorfStatus(http.StatusForbidden, matrix.Forbidden, "No dehydrated device exists.")
	}
	if err != nil {
		return Device{}, fmt.Errorf("reading dehydrated device: %w", err)
	}
	if d.DeviceID != deviceID {
		return Device{}, matrix.ErrorfStatus(http.StatusForbidden, matrix.Forbidden, "You may only fetch messages for your dehydrated device.")
	}
	return d.Device, nil
}
