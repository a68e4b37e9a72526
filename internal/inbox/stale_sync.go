package inbox

import (
	"context"
	"encoding/json"
	"strings"
	"time"
)

// MSC3944's sync-time rules: what can only be judged when a message is
// about to be handed out. A message a rule drops is left out of the batch
// but stays inside its range, so the next since acknowledges it with the
// rest, exactly like an undeliverable row: nothing else moves.

// VerificationRequestMaxAge: an m.key.verification.request whose timestamp
// is older than this when it would be handed out is dropped (the spec tells
// clients to ignore such requests anyway).
const VerificationRequestMaxAge = 10 * time.Minute

// Drop reasons of the sync-time rules.
const (
	// DropVerificationExpired: an m.key.verification.request more than
	// VerificationRequestMaxAge old at sync time.
	DropVerificationExpired = "verification_request_expired"
	// DropRequestingDeviceGone: an m.room_key_request or m.secret.request
	// (action request) from a local user whose requesting device no longer
	// exists at sync time.
	DropRequestingDeviceGone = "requesting_device_gone"
)

// DeviceExistsFunc reports whether a local user's device is live.
type DeviceExistsFunc func(ctx context.Context, userID, deviceID string) (bool, error)

// syncDropper applies the sync-time rules to one batch. It looks up each
// (sender, requesting device) at most once per batch, and only for plain
// requests from local senders: m.room.encrypted is never parsed, and a
// remote sender's devices are not ours to judge (our cache of them may be
// stale).
type syncDropper struct {
	s      *Service
	now    time.Time
	exists map[[2]string]bool
}

// drop returns the reason to drop msg, or "".
func (d *syncDropper) drop(ctx context.Context, msg Message) (string, error) {
	switch msg.Type {
	case TypeVerificationRequest:
		var f struct {
			Timestamp int64 `json:"timestamp"`
		}
		if err := json.Unmarshal(msg.Content, &f); err != nil || f.Timestamp <= 0 {
			return "", nil
		}
		if d.now.Sub(time.UnixMilli(f.Timestamp)) > VerificationRequestMaxAge {
			return DropVerificationExpired, nil
		}
	case TypeRoomKeyRequest, TypeSecretRequest:
		if d.s.cfg.DeviceExists == nil || !d.s.isLocal(msg.Sender) {
			return "", nil
		}
		f, ok := parseStale(msg.Content)
		if !ok || f.Action != "request" || f.RequestingDeviceID == "" {
			return "", nil
		}
		k := [2]string{msg.Sender, f.RequestingDeviceID}
		live, seen := d.exists[k]
		if !seen {
			var err error
			if live, err = d.s.cfg.DeviceExists(ctx, msg.Sender, f.RequestingDeviceID); err != nil {
				return "", err
			}
			if d.exists == nil {
				d.exists = map[[2]string]bool{}
			}
			d.exists[k] = live
		}
		if !live {
			return DropRequestingDeviceGone, nil
		}
	}
	return "", nil
}

// isLocal reports whether userID belongs to this server.
func (s *Service) isLocal(userID string) bool {
	i := strings.IndexByte(userID, ':')
	return i >= 0 && userID[i+1:] == s.cfg.ServerName
}
