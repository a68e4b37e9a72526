package devicelists

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/todeviced/todeviced/internal/wakeup"
)

// The use cases of uploaded cross-signing keys and signatures, written once
// for both backends over CrossSigningTx.

func (s *store) UploadCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage,
	check func(map[string]json.RawMessage, time.Time) (bool, error)) (bool, error) {
	var changed bool
	err := s.db.Write(ctx, func(tx Tx) (wake []wakeup.Key, err error) {
		changed = false
		// The stream lock orders every writer of cross-signing keys: the
		// keys checked are the keys replaced.
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		stored, err := tx.AllCrossSigningOf(ctx, userID)
		if err != nil {
			return nil, err
		}
		until, err := tx.ReplaceableUntil(ctx, userID)
		if err != nil {
			return nil, err
		}
		if noop, err := check(stored, until); err != nil || noop {
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

func (s *store) AllowCrossSigningReplacement(ctx context.Context, userID string, until time.Time) error {
	return s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		return nil, tx.AllowReplacement(ctx, userID, until)
	})
}

func (s *store) Signatures(ctx context.Context, targets []string) ([]Signature, error) {
	var out []Signature
	err := s.db.Read(ctx, func(tx Tx) (err error) {
		out, err = tx.SignaturesOf(ctx, targets)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading signatures: %w", err)
	}
	return out, nil
}

// PutSignatures: a new signature on the signer's device is that device's
// change (an m.device_list_update with the keys and their public
// signatures), one on the signer's master key an m.signing_key_update; each
// is a device-list change of the signer. A new signature on another user's
// key takes a position only the signer sees the target changed in.
func (s *store) PutSignatures(ctx context.Context, signer string, sigs []Signature) (int, error) {
	sigs = slices.Clone(sigs)
	// One order of rows for every writer.
	slices.SortFunc(sigs, func(a, b Signature) int {
		return cmp.Or(cmp.Compare(a.TargetUserID, b.TargetUserID), cmp.Compare(a.TargetKeyID, b.TargetKeyID),
			cmp.Compare(a.SignerKeyID, b.SignerKeyID))
	})
	var stored int
	err := s.db.Write(ctx, func(tx Tx) ([]wakeup.Key, error) {
		stored = 0
		if err := tx.LockStream(ctx); err != nil {
			return nil, err
		}
		var devices []string
		master := false
		others := map[string]bool{}
		for _, sig := range sigs {
			sig.SignerUserID = signer
			n, err := tx.PutSignature(ctx, sig)
			if err != nil {
				return nil, err
			}
			if !n {
				continue
			}
			stored++
			switch {
			case sig.TargetUserID != signer:
				others[sig.TargetUserID] = true
			case !isDevice(sig):
				master = true
			default:
				if !slices.Contains(devices, sig.TargetKeyID) {
					devices = append(devices, sig.TargetKeyID)
				}
			}
		}
		var wake []wakeup.Key
		if len(devices) > 0 {
			w, err := s.signedDevicesChanged(ctx, tx, signer, devices)
			if err != nil {
				return nil, err
			}
			wake = append(wake, w...)
		}
		if master {
			_, w, err := s.deviceChanged(ctx, tx, signer)
			if err != nil {
				return nil, err
			}
			out, err := s.queueSigningKeyUpdate(ctx, tx, signer)
			if err != nil {
				return nil, err
			}
			wake = append(append(wake, w...), out...)
		}
		targets := make([]string, 0, len(others))
		for u := range others {
			targets = append(targets, u)
		}
		slices.Sort(targets)
		for _, u := range targets {
			pos, err := s.appendStream(ctx, tx, "device", "", "")
			if err != nil {
				return nil, err
			}
			if err := tx.AppendSignatureChange(ctx, pos, signer, u); err != nil {
				return nil, err
			}
		}
		if len(targets) > 0 {
			wake = append(wake, wakeup.UserKey(signer))
		}
		return wake, nil
	})
	if err != nil {
		return 0, err
	}
	return stored, nil
}

// isDevice tells a signature on a device from one on a master key, whose
// target is the signed key itself; a device's target is its device id.
func isDevice(sig Signature) bool { return sig.TargetKeyID != sig.TargetPublic }

// signedDevicesChanged records a change of each of a local user's devices
// whose signatures changed, with its keys as everyone sees them.
func (s *store) signedDevicesChanged(ctx context.Context, tx Tx, userID string, devices []string) ([]wakeup.Key, error) {
	live, err := tx.LiveDeviceKeys(ctx, userID)
	if err != nil {
		return nil, err
	}
	sigs, err := tx.SignaturesOf(ctx, []string{userID})
	if err != nil {
		return nil, err
	}
	var wake []wakeup.Key
	for _, d := range live {
		if !slices.Contains(devices, d.DeviceID) {
			continue
		}
		keys := mergeDeviceSignatures(d.Keys, userID, d.DeviceID, sigs, "")
		w, err := s.localDeviceChanged(ctx, tx, userID, DeviceUpdate{DeviceID: d.DeviceID, Keys: keys})
		if err != nil {
			return nil, err
		}
		wake = append(wake, w...)
	}
	return wake, nil
}
