package devicelists

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// The client's half of the key machinery: /keys/upload and /keys/claim,
// local and through federation.

// Limits on key uploads and claims.
const (
	// MaxOneTimeKeysPerUpload bounds the one-time keys of one upload
	// (clients upload up to half their Olm account's capacity, 50 today).
	MaxOneTimeKeysPerUpload = 1000
	// MaxOneTimeKeyBytes bounds one uploaded one-time or fallback key.
	MaxOneTimeKeyBytes = 4 << 10
	// MaxClaims bounds the devices of one claim.
	MaxClaims = 10000
	// SignedCurve25519 is the one-time key algorithm clients use; its
	// count is always reported, 0 when none is left (as Synapse does:
	// clients read a missing count as "upload keys" or not at all).
	SignedCurve25519 = "signed_curve25519"
	// DefaultKeysClaimTimeout is how long a claim waits for other servers
	// when the client gives no timeout (the spec's default).
	DefaultKeysClaimTimeout = 10 * time.Second
	// UserKeysClaimPath is the federation claim.
	UserKeysClaimPath = "/_matrix/federation/v1/user/keys/claim"
)

// KeysUpload is the body of POST /keys/upload.
type KeysUpload struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// UploadResult is the answer to /keys/upload.
type UploadResult struct {
	OneTimeKeyCounts map[string]int `json:"one_time_key_counts"`
}

// deviceKeysBody is the part of a DeviceKeys object that is checked.
type deviceKeysBody struct {
	UserID     string                       `json:"user_id"`
	DeviceID   string                       `json:"device_id"`
	Algorithms []string                     `json:"algorithms"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// decodeKey reads an unpadded (or padded) base64 key or signature.
func decodeKey(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// verifySigned checks obj's signature by keyID ("ed25519:DEVICE") of
// userID over its canonical JSON without signatures and unsigned.
func verifySigned(what string, obj map[string]json.RawMessage, userID, keyID string, pub ed25519.PublicKey) error {
	var sigs map[string]map[string]string
	if raw, ok := obj["signatures"]; ok {
		if err := json.Unmarshal(raw, &sigs); err != nil {
			return matrix.Errorf(matrix.BadJSON, "%s: signatures must map user ids to key ids to signatures.", what)
		}
	}
	sig, ok := sigs[userID][keyID]
	if !ok {
		return matrix.Errorf(matrix.InvalidParam, "%s is not signed by %s of %s.", what, keyID, userID)
	}
	raw, err := decodeKey(sig)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return matrix.Errorf(matrix.InvalidParam, "%s: the signature by %s is not an unpadded base64 ed25519 signature.", what, keyID)
	}
	b, err := matrix.SignedJSON(obj)
	if err != nil {
		return matrix.Errorf(matrix.BadJSON, "%s cannot be put in canonical JSON: %v.", what, err)
	}
	if !ed25519.Verify(pub, b, raw) {
		return matrix.Errorf(matrix.InvalidParam, "%s: the signature by %s does not verify.", what, keyID)
	}
	return nil
}

// checkDeviceKeys checks an uploaded DeviceKeys object: it names the
// device, lists its algorithms and keys, and is signed by the device's own
// ed25519 key. It returns the compact object and that key.
func checkDeviceKeys(raw json.RawMessage, userID, deviceID string) (json.RawMessage, ed25519.PublicKey, error) {
	if string(raw) == "null" {
		return nil, nil, matrix.Errorf(matrix.BadJSON, "device_keys must be an object when given.")
	}
	k, err := checkKeyObject("device_keys", raw, userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	var dk deviceKeysBody
	if err := json.Unmarshal(k, &dk); err != nil {
		return nil, nil, matrix.Errorf(matrix.BadJSON, "device_keys is malformed: %v.", err)
	}
	if dk.UserID != userID || dk.DeviceID != deviceID {
		return nil, nil, matrix.Errorf(matrix.InvalidParam, "device_keys must name user %s and device %s.", userID, deviceID)
	}
	if len(dk.Algorithms) == 0 {
		return nil, nil, matrix.Errorf(matrix.MissingParam, "device_keys lists no algorithms.")
	}
	keyID := "ed25519:" + deviceID
	pub, err := decodeKey(dk.Keys[keyID])
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, nil, matrix.Errorf(matrix.InvalidParam, "device_keys has no valid %s key.", keyID)
	}
	var obj map[string]json.RawMessage
	_ = json.Unmarshal(k, &obj) // checked by checkKeyObject
	if err := verifySigned("device_keys", obj, userID, keyID, pub); err != nil {
		return nil, nil, err
	}
	return k, pub, nil
}

// CheckKeyAlgorithm validates an algorithm name: an opaque identifier
// without ':'.
func CheckKeyAlgorithm(alg string) error {
	if err := matrix.ValidateID("algorithm", alg); err != nil {
		return matrix.Errorf(matrix.InvalidParam, "Invalid key algorithm %q: %v.", matrix.Quote(alg), err)
	}
	if strings.Contains(alg, ":") {
		return matrix.Errorf(matrix.InvalidParam, "Invalid key algorithm %q: it contains ':'.", matrix.Quote(alg))
	}
	return nil
}

// checkOneTimeKeys checks uploaded one-time or fallback keys: ids
// "algorithm:key_id", each key an object with a key, signed by the
// device's ed25519 key.
func checkOneTimeKeys(what string, keys map[string]json.RawMessage, userID, deviceID string, pub ed25519.PublicKey) ([]OneTimeKey, error) {
	out := make([]OneTimeKey, 0, len(keys))
	for id, raw := range keys {
		alg, keyID, ok := strings.Cut(id, ":")
		if !ok || keyID == "" {
			return nil, matrix.Errorf(matrix.InvalidParam, "%s: key id %q is not algorithm:key_id.", what, matrix.Quote(id))
		}
		if err := CheckKeyAlgorithm(alg); err != nil {
			return nil, err
		}
		if err := matrix.ValidateID("key id", keyID); err != nil {
			return nil, matrix.Errorf(matrix.InvalidParam, "%s: invalid key id %q: %v.", what, matrix.Quote(id), err)
		}
		name := what + " " + matrix.Quote(id)
		if len(raw) > MaxOneTimeKeyBytes {
			return nil, matrix.Errorf(matrix.TooLarge, "%s is larger than %d bytes.", name, MaxOneTimeKeyBytes)
		}
		k, err := checkKeyObject(name, raw, userID, deviceID)
		if err != nil {
			return nil, err
		}
		var obj map[string]json.RawMessage
		_ = json.Unmarshal(k, &obj)
		var key string
		if err := json.Unmarshal(obj["key"], &key); err != nil || key == "" {
			return nil, matrix.Errorf(matrix.InvalidParam, "%s has no key.", name)
		}
		if pub == nil {
			return nil, matrix.Errorf(matrix.InvalidParam, "Upload device_keys before %s: they are checked against the device's ed25519 key.", what)
		}
		if err := verifySigned(name, obj, userID, "ed25519:"+deviceID, pub); err != nil {
			return nil, err
		}
		out = append(out, OneTimeKey{Algorithm: alg, KeyID: keyID, Key: k})
	}
	return out, nil
}

// storedEd25519 reads the device's ed25519 key from its stored device
// keys; nil when it has none.
func (r *Service) storedEd25519(ctx context.Context, userID, deviceID string) (ed25519.PublicKey, error) {
	devs, err := r.store.LocalKeys(ctx, map[string][]string{userID: {deviceID}})
	if err != nil {
		return nil, fmt.Errorf("reading device keys: %w", err)
	}
	for _, d := range devs {
		if d.DeviceID != deviceID || d.Keys == nil {
			continue
		}
		var dk deviceKeysBody
		if json.Unmarshal(d.Keys, &dk) != nil {
			return nil, nil
		}
		if pub, err := decodeKey(dk.Keys["ed25519:"+deviceID]); err == nil && len(pub) == ed25519.PublicKeySize {
			return pub, nil
		}
	}
	return nil, nil
}

// UploadKeys stores a local device's keys (POST /keys/upload), all in one
// transaction. Device keys take PutDevice's path: a change is a
// device-list change and the same keys again change nothing. A DeviceKeys object that differs from the stored
// one replaces it, as Synapse does (the spec says nothing; Synapse
// discusses refusing a changed identity key, element-hq/synapse#18511).
// One-time and fallback keys must be signed by the device's ed25519 key
// (the one uploaded with them, or the stored one).
func (r *Service) UploadKeys(ctx context.Context, userID, deviceID string, u KeysUpload) (UploadResult, error) {
	if err := r.CheckLocalDevice(userID, deviceID); err != nil {
		return UploadResult{}, err
	}
	if len(u.OneTimeKeys) > MaxOneTimeKeysPerUpload {
		return UploadResult{}, matrix.Errorf(matrix.TooLarge, "More than %d one-time keys in one upload.", MaxOneTimeKeysPerUpload)
	}
	var pub ed25519.PublicKey
	var deviceKeys json.RawMessage
	if u.DeviceKeys != nil {
		var err error
		if deviceKeys, pub, err = checkDeviceKeys(u.DeviceKeys, userID, deviceID); err != nil {
			return UploadResult{}, err
		}
	}
	if pub == nil && len(u.OneTimeKeys)+len(u.FallbackKeys) > 0 {
		var err error
		if pub, err = r.storedEd25519(ctx, userID, deviceID); err != nil {
			return UploadResult{}, err
		}
	}
	otks, err := checkOneTimeKeys("one_time_keys", u.OneTimeKeys, userID, deviceID, pub)
	if err != nil {
		return UploadResult{}, err
	}
	fbs, err := checkOneTimeKeys("fallback_keys", u.FallbackKeys, userID, deviceID, pub)
	if err != nil {
		return UploadResult{}, err
	}
	algs := map[string]bool{}
	for _, k := range fbs {
		if algs[k.Algorithm] {
			return UploadResult{}, matrix.Errorf(matrix.InvalidParam, "fallback_keys has more than one %s key.", matrix.Quote(k.Algorithm))
		}
		algs[k.Algorithm] = true
	}
	// The device must exist: an upload never creates one.
	if _, err := r.store.Device(ctx, userID, deviceID); err != nil {
		if errors.Is(err, ErrNotFound) {
			return UploadResult{}, matrix.Errorf(matrix.NotFound, "No such device.")
		}
		return UploadResult{}, fmt.Errorf("reading device: %w", err)
	}
	counts, keysChanged, err := r.store.UploadKeys(ctx, KeyUpload{UserID: userID, DeviceID: deviceID, DeviceKeys: deviceKeys,
		FederateDisplayName: r.federationNames, OneTimeKeys: otks, FallbackKeys: fbs})
	if errors.Is(err, ErrNotFound) {
		return UploadResult{}, matrix.Errorf(matrix.NotFound, "No such device.")
	}
	if err != nil {
		if _, ok := matrix.AsError(err); ok {
			return UploadResult{}, err
		}
		return UploadResult{}, fmt.Errorf("storing one-time keys: %w", err)
	}
	if keysChanged {
		r.m.changes.WithLabelValues(ChangeDeviceUpdate).Inc()
	}
	r.m.keysUploaded.WithLabelValues(KeyOneTime).Add(float64(len(otks)))
	r.m.keysUploaded.WithLabelValues(KeyFallback).Add(float64(len(fbs)))
	return UploadResult{OneTimeKeyCounts: WithCurveCount(counts.OneTimeKeys)}, nil
}

// WithCurveCount adds signed_curve25519: 0 when no such key is left: /sync
// and /keys/upload always report that count (devicesync applies it to the
// counts a sync reads with its messages).
func WithCurveCount(c map[string]int) map[string]int {
	out := make(map[string]int, len(c)+1)
	out[SignedCurve25519] = 0
	for k, v := range c {
		out[k] = v
	}
	return out
}

// KeyCounts reads a device's one-time-key counts (signed_curve25519
// always present) and the algorithms of its unused fallback keys, as
// /sync reports them: for a sync that reads no inbox (a sliding-sync
// connection without to_device). Every other sync reads them in its inbox
// round trip (inbox.SyncQuery.KeyCounts).
func (r *Service) KeyCounts(ctx context.Context, nid int64) (map[string]int, []string, error) {
	c, err := r.store.KeyCounts(ctx, nid)
	if err != nil {
		return nil, nil, fmt.Errorf("counting one-time keys: %w", err)
	}
	return WithCurveCount(c.OneTimeKeys), c.UnusedFallback, nil
}

// KeysClaim is the body of POST /keys/claim (and, without timeout, of the
// federation claim): user id -> device id -> algorithm.
type KeysClaim struct {
	OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	Timeout     *int64                       `json:"timeout"`
}

// ClaimedKeys are claimed keys: user id -> device id -> key id -> key.
type ClaimedKeys map[string]map[string]map[string]json.RawMessage

// ClaimResult is the answer to /keys/claim.
type ClaimResult struct {
	Failures    map[string]json.RawMessage `json:"failures"`
	OneTimeKeys ClaimedKeys                `json:"one_time_keys"`
}

// FederationClaimResult is the answer to the federation claim.
type FederationClaimResult struct {
	OneTimeKeys ClaimedKeys `json:"one_time_keys"`
}

func (c ClaimedKeys) add(userID, deviceID, keyID string, key json.RawMessage) {
	if c[userID] == nil {
		c[userID] = map[string]map[string]json.RawMessage{}
	}
	if c[userID][deviceID] == nil {
		c[userID][deviceID] = map[string]json.RawMessage{}
	}
	c[userID][deviceID][keyID] = key
}

// checkClaims validates a claim's user ids, device ids and algorithms.
func checkClaims(q map[string]map[string]string) error {
	n := 0
	for userID, devs := range q {
		if _, err := matrix.ParseUserID(userID); err != nil {
			return matrix.Errorf(matrix.InvalidParam, "Invalid user id %q: %v.", matrix.Quote(userID), err)
		}
		for d, alg := range devs {
			if err := matrix.ValidateDeviceID(d); err != nil {
				return matrix.Errorf(matrix.InvalidParam, "Invalid device id %q of %s: %v.", matrix.Quote(d), userID, err)
			}
			if err := CheckKeyAlgorithm(alg); err != nil {
				return err
			}
			n++
		}
	}
	if n > MaxClaims {
		return matrix.Errorf(matrix.TooLarge, "More than %d devices in one claim.", MaxClaims)
	}
	return nil
}

// ClaimKeys answers /keys/claim: a key of each device asked for, local
// devices from the store, remote ones through federation within the
// timeout (an unreachable server is in failures).
func (r *Service) ClaimKeys(ctx context.Context, q KeysClaim) (ClaimResult, error) {
	res := ClaimResult{Failures: map[string]json.RawMessage{}, OneTimeKeys: ClaimedKeys{}}
	if err := checkClaims(q.OneTimeKeys); err != nil {
		return res, err
	}
	local := map[string]map[string]string{}
	remote := map[string]map[string]map[string]string{}
	for userID, devs := range q.OneTimeKeys {
		uid, _ := matrix.ParseUserID(userID)
		isLocal, err := r.isLocal(userID, uid)
		if err != nil {
			return res, err
		}
		if isLocal {
			local[userID] = devs
			continue
		}
		dest := strings.ToLower(uid.Server)
		if remote[dest] == nil {
			remote[dest] = map[string]map[string]string{}
		}
		remote[dest][userID] = devs
	}
	if err := r.claimLocal(ctx, local, res.OneTimeKeys); err != nil {
		return res, err
	}
	if len(remote) > 0 {
		timeout := DefaultKeysClaimTimeout
		if q.Timeout != nil && *q.Timeout >= 0 {
			timeout = min(time.Duration(*q.Timeout)*time.Millisecond, time.Minute)
		}
		r.claimRemote(ctx, remote, timeout, &res)
	}
	return res, nil
}

// ClaimLocalKeys answers the federation claim: keys of local users' devices
// only (other users, and ids no store could hold, are left out).
func (r *Service) ClaimLocalKeys(ctx context.Context, q map[string]map[string]string) (FederationClaimResult, error) {
	local := map[string]map[string]string{}
	n := 0
	for userID, devs := range q {
		if uid, err := matrix.ParseUserID(userID); err != nil || uid.Server != r.serverName {
			continue
		}
		for d, alg := range devs {
			if matrix.ValidateDeviceID(d) != nil || CheckKeyAlgorithm(alg) != nil {
				continue
			}
			if local[userID] == nil {
				local[userID] = map[string]string{}
			}
			local[userID][d] = alg
			n++
		}
	}
	if n > MaxClaims {
		return FederationClaimResult{}, matrix.Errorf(matrix.TooLarge, "More than %d devices in one claim.", MaxClaims)
	}
	out := FederationClaimResult{OneTimeKeys: ClaimedKeys{}}
	return out, r.claimLocal(ctx, local, out.OneTimeKeys)
}

func (r *Service) claimLocal(ctx context.Context, local map[string]map[string]string, out ClaimedKeys) error {
	var claims []KeyClaim
	for userID, devs := range local {
		for d, alg := range devs {
			claims = append(claims, KeyClaim{UserID: userID, DeviceID: d, Algorithm: alg})
		}
	}
	if len(claims) == 0 {
		return nil
	}
	got, err := r.store.ClaimKeys(ctx, claims)
	if err != nil {
		return fmt.Errorf("claiming one-time keys: %w", err)
	}
	for _, c := range got {
		if c.Key.Key == nil {
			r.m.keysExhausted.Inc()
			continue
		}
		if c.Fallback {
			r.m.keysExhausted.Inc()
			r.m.fallbackServed.Inc()
		} else {
			r.m.keysClaimed.Inc()
		}
		out.add(c.UserID, c.DeviceID, c.Key.FullID(), c.Key.Key)
	}
	return nil
}

func (r *Service) claimRemote(ctx context.Context, remote map[string]map[string]map[string]string, timeout time.Duration, res *ClaimResult) {
	type answer struct {
		server string
		body   json.RawMessage
		err    error
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	answers := make(chan answer, len(remote))
	for server, q := range remote {
		if r.fed == nil {
			answers <- answer{server: server, err: errors.New("federation is off")}
			continue
		}
		go func() {
			body, err := r.fed.cfg.Remote.ClaimKeys(ctx, server, q)
			answers <- answer{server, body, err}
		}()
	}
	for range remote {
		a := <-answers
		if a.err == nil {
			a.err = r.readRemoteClaim(a.body, remote[a.server], res.OneTimeKeys)
		}
		if a.err != nil {
			r.log.InfoContext(ctx, "remote key claim failed", "server", a.server, "err", a.err)
			res.Failures[a.server] = json.RawMessage(`{}`)
		}
	}
}

// readRemoteClaim adds what a server answered to out: only keys of the
// devices asked for, of the algorithm asked for, each bounded.
func (r *Service) readRemoteClaim(body json.RawMessage, asked map[string]map[string]string, out ClaimedKeys) error {
	if err := matrix.CheckJSON(body, matrix.MaxContentDepth); err != nil {
		return fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	var resp FederationClaimResult
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	for userID, devs := range resp.OneTimeKeys {
		for d, keys := range devs {
			alg, ok := asked[userID][d]
			if !ok {
				continue
			}
			ids := make([]string, 0, len(keys))
			for id := range keys {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for _, id := range ids {
				k := keys[id]
				if !strings.HasPrefix(id, alg+":") || len(k) > MaxOneTimeKeyBytes {
					continue
				}
				out.add(userID, d, id, k)
				break // one key per device
			}
		}
	}
	return nil
}
