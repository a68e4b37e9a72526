package inbox

// Rate limits on room key requests, as Synapse applies them by default: an
// m.room_key_request to another user counts one token per recipient user,
// from a bucket per sending device for local senders and per sending user
// for senders of other servers. Over the limit the messages to that user
// are dropped and counted; the send itself still succeeds (200, as
// Synapse answers), so a looping client learns nothing it could retry on.
// The limiters are per replica, in memory, like --send-rate-limit's.

import "github.com/todeviced/todeviced/internal/matrix"

// Defaults of the key request limits (Synapse's rc_key_requests).
const (
	DefaultKeyRequestRate  = 20
	DefaultKeyRequestBurst = 100
)

// DropKeyRequestRateLimited: an m.room_key_request to another user over
// the sender's key request rate limit.
const DropKeyRequestRateLimited = "key_request_rate_limited"

type deviceKey struct{ userID, deviceID string }

// keyLimits are the two limiters; nil when the limit is off.
type keyLimits struct {
	local  *RateLimiter[deviceKey]
	remote *RateLimiter[string]
}

func newKeyLimits(cfg Config) keyLimits {
	if cfg.KeyRequestRate <= 0 {
		return keyLimits{}
	}
	burst := cfg.KeyRequestBurst
	return keyLimits{
		local:  NewRateLimiter[deviceKey](cfg.KeyRequestRate, burst, cfg.Now),
		remote: NewRateLimiter[string](cfg.KeyRequestRate, burst, cfg.Now),
	}
}

// limitLocal removes from msgs the recipient users over the sending
// device's limit and returns how many messages it dropped. msgs is not
// modified: a copy is returned when something is dropped.
func (s *Service) limitLocal(txn TxnKey, msgs Messages) (_ Messages, dropped, taken int) {
	if s.keys.local == nil || txn.EventType != TypeRoomKeyRequest {
		return msgs, 0, 0
	}
	var out Messages
	for userID, devices := range msgs {
		if userID == txn.UserID {
			continue
		}
		if _, err := matrix.ParseUserID(userID); err != nil {
			// Not limited but refused, with the whole send: BuildAccept
			// answers M_INVALID_PARAM, whatever the limit.
			continue
		}
		if ok, _ := s.keys.local.Allow(deviceKey{txn.UserID, txn.DeviceID}); ok {
			taken++
			continue
		}
		if out == nil {
			out = make(Messages, len(msgs))
			for u, d := range msgs {
				out[u] = d
			}
		}
		delete(out, userID)
		dropped += len(devices)
	}
	if out == nil {
		return msgs, 0, taken
	}
	return out, dropped, taken
}

// refundLocal gives back the tokens limitLocal took for a send that was
// then not stored (its guard failed, or the store did): its retry, as the
// same device or another, is charged once.
func (s *Service) refundLocal(txn TxnKey, taken int) {
	if s.keys.local != nil {
		s.keys.local.Refund(deviceKey{txn.UserID, txn.DeviceID}, taken)
	}
}

// limitRemote drops from r the messages to each recipient user over the
// sending user's limit and returns how many it dropped.
func (s *Service) limitRemote(r *RemoteAccept) int {
	if s.keys.remote == nil || r.EventType != TypeRoomKeyRequest {
		return 0
	}
	// r.Local is sorted by user: one token per recipient user.
	kept := r.Local[:0:0]
	dropped := 0
	for i := 0; i < len(r.Local); {
		j := i
		for j < len(r.Local) && r.Local[j].UserID == r.Local[i].UserID {
			j++
		}
		if r.Local[i].UserID == r.Sender {
			kept = append(kept, r.Local[i:j]...)
		} else if ok, _ := s.keys.remote.Allow(r.Sender); ok {
			kept = append(kept, r.Local[i:j]...)
		} else {
			dropped += j - i
		}
		i = j
	}
	if dropped > 0 {
		r.Local = kept
	}
	return dropped
}
