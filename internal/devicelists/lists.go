package devicelists

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Limits on what the internal API accepts for device lists.
const (
	MaxRoomIDBytes = 255
	// MaxKeysBytes bounds one DeviceKeys or cross-signing key object.
	MaxKeysBytes = 64 << 10
	// DefaultStreamRetention is how long device-list stream positions are
	// kept. A since older than that is answered with everyone the user shares
	// an encrypted room with: correct, only less precise.
	DefaultStreamRetention = 30 * 24 * time.Hour
	streamPruneBatch       = 5000
)

// CheckRoomID validates a room id: '!' then an opaque part. Room versions from
// 12 on drop the ":server" suffix, so only the sigil is required.
func CheckRoomID(roomID string) error {
	if len(roomID) < 2 || roomID[0] != '!' || len(roomID) > MaxRoomIDBytes {
		return matrix.Errorf(matrix.InvalidParam, "Invalid room id %q.", matrix.Quote(roomID))
	}
	for i := 1; i < len(roomID); i++ {
		if c := roomID[i]; c < 0x21 || c > 0x7e {
			return matrix.Errorf(matrix.InvalidParam, "Invalid room id %q.", matrix.Quote(roomID))
		}
	}
	return nil
}

// checkKeyObject checks that raw is a JSON object of bounded size whose
// user_id (and, for device keys, device_id) name the owner, so a homeserver
// bug cannot file one user's keys under another.
func checkKeyObject(what string, raw json.RawMessage, userID, deviceID string) (json.RawMessage, error) {
	if len(raw) > MaxKeysBytes {
		return nil, matrix.Errorf(matrix.TooLarge, "%s is larger than %d bytes.", what, MaxKeysBytes)
	}
	// Keys are stored, answered in /keys/query and sent over federation
	// (signed, as canonical JSON): accept only what all of those carry.
	if err := matrix.CheckJSON(raw, matrix.MaxContentDepth); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "%s is not acceptable JSON: %v.", what, err)
	}
	if err := matrix.CheckCanonical(raw); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "%s: %v.", what, err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, matrix.Errorf(matrix.BadJSON, "%s must be a JSON object.", what)
	}
	var owner string
	if u, ok := obj["user_id"]; ok {
		if err := json.Unmarshal(u, &owner); err != nil || owner != userID {
			return nil, matrix.Errorf(matrix.InvalidParam, "%s belongs to %s, not %s.", what, matrix.Quote(string(u)), userID)
		}
	}
	if deviceID != "" {
		var dev string
		if d, ok := obj["device_id"]; ok {
			if err := json.Unmarshal(d, &dev); err != nil || dev != deviceID {
				return nil, matrix.Errorf(matrix.InvalidParam, "%s is for device %s, not %s.", what, matrix.Quote(string(d)), deviceID)
			}
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "%s is not valid JSON.", what)
	}
	return buf.Bytes(), nil
}

// CrossSigningKeys is the body of PUT …/users/{userId}/cross_signing.
type CrossSigningKeys struct {
	Master      json.RawMessage `json:"master_key"`
	SelfSigning json.RawMessage `json:"self_signing_key"`
	UserSigning json.RawMessage `json:"user_signing_key"`
}

// PutCrossSigning stores a local user's cross-signing keys. A change of the
// master or self-signing key is sent to the servers sharing a room with
// the user (m.signing_key_update); remote users' keys come from
// their servers, never through here.
func (r *Service) PutCrossSigning(ctx context.Context, userID string, k CrossSigningKeys) error {
	if _, err := r.requireLocal(userID); err != nil {
		return err
	}
	keys := map[string]json.RawMessage{}
	for typ, raw := range map[string]json.RawMessage{MasterKey: k.Master, SelfSigningKey: k.SelfSigning, UserSigningKey: k.UserSigning} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		c, err := checkKeyObject(typ+" key", raw, userID, "")
		if err != nil {
			return err
		}
		keys[typ] = c
	}
	if len(keys) == 0 {
		return matrix.Errorf(matrix.MissingParam, "No cross-signing key given.")
	}
	changed, err := r.store.PutCrossSigning(ctx, userID, keys)
	if err != nil {
		return fmt.Errorf("storing cross-signing keys: %w", err)
	}
	if changed {
		r.m.changes.WithLabelValues(ChangeCrossSigning).Inc()
	}
	return nil
}

// SetRoomEncrypted records that a room is encrypted.
func (r *Service) SetRoomEncrypted(ctx context.Context, roomID string) error {
	if err := CheckRoomID(roomID); err != nil {
		return err
	}
	changed, err := r.store.SetRoomEncrypted(ctx, roomID)
	if err != nil {
		return fmt.Errorf("storing room encryption: %w", err)
	}
	if changed {
		r.m.changes.WithLabelValues(ChangeEncryption).Inc()
		if r.fed != nil {
			r.fed.Kick()
		}
	}
	return nil
}

// MemberUpdate is one membership as the internal API takes it.
type MemberUpdate struct {
	Membership     string `json:"membership"`
	StreamOrdering *int64 `json:"stream_ordering"`
}

// SetMemberships applies membership updates for a room, of local and remote
// users.
func (r *Service) SetMemberships(ctx context.Context, roomID string, members map[string]MemberUpdate) error {
	if err := CheckRoomID(roomID); err != nil {
		return err
	}
	ms := make([]Membership, 0, len(members))
	for userID, u := range members {
		uid, err := matrix.ParseUserID(userID)
		if err != nil {
			return matrix.Errorf(matrix.InvalidParam, "Invalid user id %q: %v.", matrix.Quote(userID), err)
		}
		switch u.Membership {
		case "join", "invite", "knock", "leave", "ban":
		case "":
			return matrix.Errorf(matrix.MissingParam, "Missing membership for %q.", matrix.Quote(userID))
		default:
			return matrix.Errorf(matrix.InvalidParam, "Unknown membership %q for %q.", matrix.Quote(u.Membership), matrix.Quote(userID))
		}
		if u.StreamOrdering == nil {
			return matrix.Errorf(matrix.MissingParam, "Missing stream_ordering for %q.", matrix.Quote(userID))
		}
		local, err := r.isLocal(userID, uid)
		if err != nil {
			return err
		}
		ms = append(ms, Membership{UserID: userID, Membership: u.Membership, StreamOrdering: *u.StreamOrdering, Local: local})
	}
	// A fixed order keeps concurrent bulk imports from deadlocking.
	sort.Slice(ms, func(i, j int) bool { return ms[i].UserID < ms[j].UserID })
	n, err := r.store.SetMemberships(ctx, roomID, ms)
	if err != nil {
		return fmt.Errorf("storing memberships: %w", err)
	}
	r.m.memberships.Add(float64(n))
	if n > 0 && r.fed != nil {
		r.fed.Kick() // remote users who started sharing are due for a resync
	}
	return nil
}

// Head returns the newest device-list position.
func (r *Service) Head(ctx context.Context) (int64, error) {
	st, err := r.store.StreamState(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading device-list position: %w", err)
	}
	return st.Head, nil
}

// Changes returns what a local user must re-query or forget for the
// positions (from, to]. A from older than the pruned part of the stream is
// answered with everyone the user shares an encrypted room with.
func (r *Service) Changes(ctx context.Context, userID string, from, to int64) (Changes, error) {
	st, err := r.store.StreamState(ctx)
	if err != nil {
		return Changes{}, fmt.Errorf("reading device-list position: %w", err)
	}
	if from > st.Head || to > st.Head {
		return Changes{}, matrix.Errorf(matrix.InvalidParam, "Device-list position %d was never issued.", max(from, to))
	}
	if to <= from {
		return Changes{Changed: []string{}, Left: []string{}}, nil
	}
	if from < st.PrunedBelow {
		users, err := r.store.SharedUsers(ctx, userID)
		if err != nil {
			return Changes{}, fmt.Errorf("listing users sharing a room: %w", err)
		}
		return Changes{Changed: nonNil(users), Left: []string{}}, nil
	}
	c, err := r.store.Changes(ctx, userID, from, to)
	if err != nil {
		return Changes{}, fmt.Errorf("computing device-list changes: %w", err)
	}
	c.Changed, c.Left = nonNil(c.Changed), nonNil(c.Left)
	return c, nil
}

// Everyone answers a device-list since that cannot be placed (another
// database epoch): everyone the user shares an encrypted room with changed.
func (r *Service) Everyone(ctx context.Context, userID string) (Changes, error) {
	users, err := r.store.SharedUsers(ctx, userID)
	if err != nil {
		return Changes{}, fmt.Errorf("listing users sharing a room: %w", err)
	}
	return Changes{Changed: nonNil(users), Left: []string{}}, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// PruneStream drops stream positions older than the retention.
func (r *Service) PruneStream(ctx context.Context, retention time.Duration) error {
	cutoff := time.Now().Add(-retention)
	for {
		n, err := r.store.PruneStream(ctx, cutoff, streamPruneBatch)
		if err != nil {
			return fmt.Errorf("pruning the device-list stream: %w", err)
		}
		if n < streamPruneBatch {
			return nil
		}
	}
}

// KeysQuery is the body of POST /keys/query.
type KeysQuery struct {
	DeviceKeys map[string][]string `json:"device_keys"`
	Timeout    *int64              `json:"timeout"`
}

// KeysResult is the answer to /keys/query.
type KeysResult struct {
	Failures        map[string]json.RawMessage            `json:"failures"`
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys"`
}

// RemoteKeys answers key queries for users of another server (through
// federation and the remote device-list cache).
type RemoteKeys interface {
	QueryKeys(ctx context.Context, server string, query map[string][]string) (RemoteKeysResult, error)
}

// RemoteKeysResult is what a remote server told us, in the shape of the
// answer to POST /_matrix/federation/v1/user/keys/query.
type RemoteKeysResult struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
}

// SetRemote plugs in the component answering for remote users.
func (r *Service) SetRemote(rk RemoteKeys) { r.remote = rk }

// DefaultKeysQueryTimeout is how long a /keys/query waits for remote servers
// when the client gives no timeout (the spec's default).
const DefaultKeysQueryTimeout = 10 * time.Second

// QueryKeys answers /keys/query for requester (empty for a federation
// request): local users from the store, remote users through RemoteKeys
// within the timeout, unreachable servers in failures.
func (r *Service) QueryKeys(ctx context.Context, requester string, q KeysQuery) (KeysResult, error) {
	res := KeysResult{
		Failures: map[string]json.RawMessage{}, DeviceKeys: map[string]map[string]json.RawMessage{},
		MasterKeys: map[string]json.RawMessage{}, SelfSigningKeys: map[string]json.RawMessage{},
		UserSigningKeys: map[string]json.RawMessage{},
	}
	local := map[string][]string{}
	remote := map[string]map[string][]string{}
	for userID, devices := range q.DeviceKeys {
		uid, err := matrix.ParseUserID(userID)
		if err != nil {
			return res, matrix.Errorf(matrix.InvalidParam, "Invalid user id %q: %v.", matrix.Quote(userID), err)
		}
		isLocal, err := r.isLocal(userID, uid)
		if err != nil {
			return res, err
		}
		for _, d := range devices {
			if err := matrix.ValidateDeviceID(d); err != nil {
				return res, matrix.Errorf(matrix.InvalidParam, "Invalid device id %q of %s: %v.", matrix.Quote(d), userID, err)
			}
		}
		if isLocal {
			local[userID] = devices
			continue
		}
		// One query per server: DNS names ignore case.
		dest := strings.ToLower(uid.Server)
		if remote[dest] == nil {
			remote[dest] = map[string][]string{}
		}
		remote[dest][userID] = devices
	}
	if err := r.localKeys(ctx, requester, local, true, &res); err != nil {
		return res, err
	}
	if len(remote) > 0 {
		timeout := DefaultKeysQueryTimeout
		if q.Timeout != nil && *q.Timeout >= 0 {
			timeout = min(time.Duration(*q.Timeout)*time.Millisecond, time.Minute)
		}
		r.remoteKeys(ctx, remote, timeout, &res)
		// The requester's own signatures on remote users' master keys.
		var users []string
		for _, q := range remote {
			for u := range q {
				users = append(users, u)
			}
		}
		if err := r.addSignatures(ctx, requester, users, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// localKeys adds the keys of local users to res; names says whether
// devices' display names are shown (always to local clients, to other
// servers only with SetFederationDeviceNames).
func (r *Service) localKeys(ctx context.Context, requester string, local map[string][]string, names bool, res *KeysResult) error {
	if len(local) == 0 {
		return nil
	}
	devs, err := r.store.LocalKeys(ctx, local)
	if err != nil {
		return fmt.Errorf("reading device keys: %w", err)
	}
	for _, d := range devs {
		if d.Keys == nil {
			continue // a device without keys cannot be encrypted for
		}
		k := d.Keys
		if names {
			if k, err = withDisplayName(d.Keys, d.DisplayName); err != nil {
				return err
			}
		}
		if res.DeviceKeys[d.UserID] == nil {
			res.DeviceKeys[d.UserID] = map[string]json.RawMessage{}
		}
		res.DeviceKeys[d.UserID][d.DeviceID] = k
	}
	users := make([]string, 0, len(local))
	for u := range local {
		users = append(users, u)
	}
	cs, err := r.store.CrossSigning(ctx, users)
	if err != nil {
		return fmt.Errorf("reading cross-signing keys: %w", err)
	}
	for u, keys := range cs {
		if k, ok := keys[MasterKey]; ok {
			res.MasterKeys[u] = k
		}
		if k, ok := keys[SelfSigningKey]; ok {
			res.SelfSigningKeys[u] = k
		}
		// The user-signing key is only ever shown to its owner.
		if k, ok := keys[UserSigningKey]; ok && u == requester {
			res.UserSigningKeys[u] = k
		}
	}
	return r.addSignatures(ctx, requester, users, res)
}

func (r *Service) remoteKeys(ctx context.Context, remote map[string]map[string][]string, timeout time.Duration, res *KeysResult) {
	type answer struct {
		server string
		res    RemoteKeysResult
		err    error
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	answers := make(chan answer, len(remote))
	for server, q := range remote {
		if r.remote == nil {
			answers <- answer{server: server, err: fmt.Errorf("federation is off")}
			continue
		}
		go func() {
			rr, err := r.remote.QueryKeys(ctx, server, q)
			answers <- answer{server, rr, err}
		}()
	}
	for range remote {
		// A failed server is listed in failures; what it did answer (from
		// the cache) is still shown.
		a := <-answers
		if a.err != nil {
			r.log.InfoContext(ctx, "remote key query failed", "server", a.server, "err", a.err)
			res.Failures[a.server] = json.RawMessage(`{}`)
		}
		for u, devs := range a.res.DeviceKeys {
			if !strings.HasSuffix(u, ":"+a.server) {
				continue // a server answers only for its own users
			}
			res.DeviceKeys[u] = devs
		}
		for u, k := range a.res.MasterKeys {
			if strings.HasSuffix(u, ":"+a.server) {
				res.MasterKeys[u] = k
			}
		}
		for u, k := range a.res.SelfSigningKeys {
			if strings.HasSuffix(u, ":"+a.server) {
				res.SelfSigningKeys[u] = k
			}
		}
	}
}

// withDisplayName adds unsigned.device_display_name to a DeviceKeys object, as
// /keys/query shows it.
func withDisplayName(keys json.RawMessage, name string) (json.RawMessage, error) {
	if name == "" {
		return keys, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(keys, &obj); err != nil {
		return nil, fmt.Errorf("decoding stored device keys: %w", err)
	}
	unsigned := map[string]json.RawMessage{}
	if u, ok := obj["unsigned"]; ok {
		_ = json.Unmarshal(u, &unsigned)
	}
	n, _ := json.Marshal(name)
	unsigned["device_display_name"] = n
	u, _ := json.Marshal(unsigned)
	obj["unsigned"] = u
	return json.Marshal(obj)
}
