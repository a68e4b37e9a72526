package devicelists

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/todeviced/todeviced/internal/matrix"
)

// MaxAppliedIDs bounds the stream_ids of applied updates a remote user's
// cache remembers besides its stream_id (for updates naming several
// prev_ids, as clustered servers send them).
const MaxAppliedIDs = 10

// DeviceUpdate is a change of one local device, as an m.device_list_update
// tells it.
type DeviceUpdate struct {
	DeviceID    string
	Deleted     bool
	DisplayName string
	Keys        json.RawMessage // nil: none
}

type deviceListUpdateContent struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	StreamID    int64           `json:"stream_id"`
	PrevID      []int64         `json:"prev_id"`
	Deleted     bool            `json:"deleted"`
	DisplayName string          `json:"device_display_name,omitempty"`
	Keys        json.RawMessage `json:"keys,omitempty"`
}

type eduJSON struct {
	Type    string `json:"edu_type"`
	Content any    `json:"content"`
}

// DeviceListUpdateEDU builds the m.device_list_update a store queues for a
// change of userID's device at stream position streamID; prevID is the
// user's previous head (0: none, the first update of the user).
func DeviceListUpdateEDU(userID string, streamID, prevID int64, d DeviceUpdate) (json.RawMessage, error) {
	c := deviceListUpdateContent{UserID: userID, DeviceID: d.DeviceID, StreamID: streamID, PrevID: []int64{}, Deleted: d.Deleted}
	if prevID > 0 {
		c.PrevID = []int64{prevID}
	}
	if !d.Deleted {
		c.DisplayName, c.Keys = d.DisplayName, d.Keys
	}
	b, err := json.Marshal(eduJSON{Type: matrix.EDUDeviceListUpdate, Content: c})
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", matrix.EDUDeviceListUpdate, err)
	}
	return b, nil
}

type signingKeyUpdateContent struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// SigningKeyUpdateEDU builds the m.signing_key_update of a local user's
// current master and self-signing keys (the user-signing key is private).
func SigningKeyUpdateEDU(userID string, master, selfSigning json.RawMessage) (json.RawMessage, error) {
	b, err := json.Marshal(eduJSON{Type: matrix.EDUSigningKeyUpdate, Content: signingKeyUpdateContent{userID, master, selfSigning}})
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", matrix.EDUSigningKeyUpdate, err)
	}
	return b, nil
}

// RemoteUpdate is an m.device_list_update of a remote user, from that
// user's server.
type RemoteUpdate struct {
	UserID      string
	DeviceID    string
	StreamID    int64
	PrevIDs     []int64
	Deleted     bool
	DisplayName string
	Keys        json.RawMessage // nil: none
}

// RemoteOutcome is what became of an inbound device-list EDU: the values of
// the result label of todeviced_device_list_updates_received_total.
type RemoteOutcome string

// Outcomes of inbound device-list EDUs.
const (
	// RemoteApplied: the cache was updated (a stream position).
	RemoteApplied RemoteOutcome = "applied"
	// RemoteResync: the update could not be applied (a prev_id gap, or the
	// cache is stale or new); the user is resynced.
	RemoteResync RemoteOutcome = "resync"
	// RemoteIgnored: nobody local shares an encrypted room with the user,
	// or the update is old (a replay, or covered by a newer snapshot).
	RemoteIgnored RemoteOutcome = "ignored"
	// RemoteRejected: malformed, or about a user of another server than
	// the origin.
	RemoteRejected RemoteOutcome = "rejected"
)

// RemoteState is what the cache holds of a tracked remote user, as
// DecideRemoteUpdate needs it.
type RemoteState struct {
	StreamID   int64
	AppliedIDs []int64
	Stale      bool
}

// DecideRemoteUpdate rules on an update of a tracked user, conservatively:
//   - a stream_id at or below the cache's is old (a replay, or a state the
//     cache already holds or has passed): ignored;
//   - a stale cache is not updated piecemeal: resync;
//   - no prev_id at all (the origin's first update of the user, or one it
//     cannot place): resync;
//   - every prev_id must be known: the cache's stream_id, or an applied
//     update below it that the cache remembers. Anything else means an
//     update was missed: resync.
func DecideRemoteUpdate(st RemoteState, u RemoteUpdate) RemoteOutcome {
	if u.StreamID <= st.StreamID {
		return RemoteIgnored
	}
	if st.Stale || len(u.PrevIDs) == 0 {
		return RemoteResync
	}
	for _, p := range u.PrevIDs {
		if p != st.StreamID && !(p < st.StreamID && slices.Contains(st.AppliedIDs, p)) {
			return RemoteResync
		}
	}
	return RemoteApplied
}

// PushApplied adds an applied stream_id to the remembered ones, keeping the
// newest MaxAppliedIDs.
func PushApplied(ids []int64, id int64) []int64 {
	out := append(slices.Clone(ids), id)
	if len(out) > MaxAppliedIDs {
		out = out[len(out)-MaxAppliedIDs:]
	}
	return out
}

// SameDevices reports whether two device lists (sorted by device id) hold
// the same devices, names and keys.
func SameDevices(a, b []DeviceKeys) bool {
	return slices.EqualFunc(a, b, func(x, y DeviceKeys) bool {
		return x.DeviceID == y.DeviceID && x.DisplayName == y.DisplayName && bytes.Equal(x.Keys, y.Keys)
	})
}
