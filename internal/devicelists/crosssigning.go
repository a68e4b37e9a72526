package devicelists

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Cross-signing as the client uploads it: POST /keys/device_signing/upload
// (UploadCrossSigning) and POST /keys/signatures/upload (UploadSignatures).
// The keys are stored where PutCrossSigning stores them; signatures are
// stored apart and merged into the keys /keys/query (and federation's
// /user/keys/query and /user/devices) answer.

// ReplaceWindow is how long the internal API's replace_allowed lets a user
// replace their cross-signing keys without user-interactive auth (Synapse's
// master_key_replaceable_until is also ten minutes).
const ReplaceWindow = 10 * time.Minute

// MaxSignaturesPerUpload bounds the keys one signatures upload names.
const MaxSignaturesPerUpload = 1000

// ErrReplaceNeedsAuth is UploadCrossSigning's refusal to replace a user's
// cross-signing keys that the internal API has not allowed: the client API
// answers it with the spec's user-interactive-auth 401.
var ErrReplaceNeedsAuth = errors.New("replacing cross-signing keys needs user-interactive auth")

// Signature is one signature on a key, as stored.
type Signature struct {
	TargetUserID string
	// TargetKeyID is the device id, or the master key's public key.
	TargetKeyID string
	// TargetPublic is the ed25519 key signed: the device's own, or the
	// master key. A signature whose key was replaced since is not shown.
	TargetPublic string
	SignerUserID string
	SignerKeyID  string // "ed25519:<public key or device id>"
	Signature    string
}

// CrossSigningTx are the statements of uploaded cross-signing keys and
// signatures.
type CrossSigningTx interface {
	// AllCrossSigningOf reads a user's cross-signing keys, the user-signing
	// key too.
	AllCrossSigningOf(ctx context.Context, userID string) (map[string]json.RawMessage, error)
	// ReplaceableUntil reads until when a user may replace their keys
	// without user-interactive auth (zero: not at all).
	ReplaceableUntil(ctx context.Context, userID string) (time.Time, error)
	// AllowReplacement stores that time.
	AllowReplacement(ctx context.Context, userID string, until time.Time) error
	// PutSignature stores a signature and reports whether it is new or
	// changed.
	PutSignature(ctx context.Context, s Signature) (bool, error)
	// SignaturesOf reads the signatures on the keys of the users.
	SignaturesOf(ctx context.Context, targets []string) ([]Signature, error)
	// AppendSignatureChange records that the position pos tells only the
	// viewer that the target changed.
	AppendSignatureChange(ctx context.Context, pos int64, viewer, target string) error
	// SignatureChanges lists the targets of the viewer's signature changes
	// in the positions (from, to].
	SignatureChanges(ctx context.Context, viewer string, from, to int64) ([]string, error)
}

// CrossSigningStore is the persistence of uploaded keys and signatures.
type CrossSigningStore interface {
	// UploadCrossSigning stores a user's cross-signing keys after check,
	// run in the transaction with the stored keys and the replacement
	// allowance, has accepted them (check returns noop for keys already
	// stored). A change is a device-list change, as PutCrossSigning's.
	UploadCrossSigning(ctx context.Context, userID string, keys map[string]json.RawMessage,
		check func(stored map[string]json.RawMessage, replaceableUntil time.Time) (noop bool, err error)) (changed bool, err error)
	// AllowCrossSigningReplacement lets the user replace their keys
	// without user-interactive auth until the time.
	AllowCrossSigningReplacement(ctx context.Context, userID string, until time.Time) error
	// PutSignatures stores signatures by signer. New signatures on the
	// signer's own keys are a device-list change of the signer (and go to
	// other servers with the keys); new ones on other users' keys are a
	// change only the signer sees. It returns how many were new.
	PutSignatures(ctx context.Context, signer string, sigs []Signature) (int, error)
	// Signatures reads the signatures on the keys of the users.
	Signatures(ctx context.Context, targets []string) ([]Signature, error)
}

// crossSigningKey is the part of a cross-signing key that is checked.
type crossSigningKey struct {
	UserID string            `json:"user_id"`
	Usage  []string          `json:"usage"`
	Keys   map[string]string `json:"keys"`
}

// parseCrossSigningKey checks a cross-signing key of userID for usage: one
// ed25519 key whose id is its public key. It returns the public key (as
// written) and its key id.
func parseCrossSigningKey(what string, raw json.RawMessage, userID, usage string) (pub string, keyID string, err error) {
	var k crossSigningKey
	if err := json.Unmarshal(raw, &k); err != nil {
		return "", "", matrix.Errorf(matrix.BadJSON, "%s is not a cross-signing key object.", what)
	}
	if k.UserID != userID {
		return "", "", matrix.Errorf(matrix.InvalidParam, "%s belongs to %s, not %s.", what, matrix.Quote(k.UserID), userID)
	}
	if !slices.Contains(k.Usage, usage) {
		return "", "", matrix.Errorf(matrix.InvalidParam, "%s's usage must include %q.", what, usage)
	}
	if len(k.Keys) != 1 {
		return "", "", matrix.Errorf(matrix.InvalidParam, "%s must have exactly one key.", what)
	}
	for id, v := range k.Keys {
		alg, name, _ := strings.Cut(id, ":")
		if alg != "ed25519" {
			return "", "", matrix.Errorf(matrix.InvalidParam, "%s must be an ed25519 key.", what)
		}
		if b, err := decodeKey(v); err != nil || len(b) != ed25519.PublicKeySize {
			return "", "", matrix.Errorf(matrix.InvalidParam, "%s is not an ed25519 public key in base64.", what)
		}
		if name != v {
			return "", "", matrix.Errorf(matrix.InvalidParam, "%s's key id must be its public key.", what)
		}
		pub, keyID = v, id
	}
	return pub, keyID, nil
}

// strippedCanonical is the canonical JSON of a key object without
// signatures and unsigned: what a signature signs.
func strippedCanonical(raw json.RawMessage) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, matrix.Errorf(matrix.BadJSON, "A signed key must be a JSON object.")
	}
	c, err := matrix.SignedJSON(obj)
	if err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "A signed key has no canonical JSON: %v.", err)
	}
	return c, nil
}

// signaturesIn reads the signatures object of a key: signer -> key id ->
// signature (nil when there is none or it is malformed).
func signaturesIn(raw json.RawMessage) map[string]map[string]string {
	var obj struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil
	}
	return obj.Signatures
}

// verifySignature checks the signature of signer's keyID with the ed25519
// key pub (base64) on the key object raw, and returns the signature.
func verifySignature(raw json.RawMessage, signer, keyID, pub string) (string, error) {
	sig, ok := signaturesIn(raw)[signer][keyID]
	if !ok {
		return "", matrix.Errorf(matrix.InvalidSignature, "No signature by %s.", matrix.Quote(keyID))
	}
	msg, err := strippedCanonical(raw)
	if err != nil {
		return "", err
	}
	pk, err := decodeKey(pub)
	if err != nil || len(pk) != ed25519.PublicKeySize {
		return "", matrix.Errorf(matrix.InvalidSignature, "The signing key %s is not an ed25519 key.", matrix.Quote(keyID))
	}
	s, err := decodeKey(sig)
	if err != nil || len(s) != ed25519.SignatureSize || !ed25519.Verify(pk, msg, s) {
		return "", matrix.Errorf(matrix.InvalidSignature, "Invalid signature by %s.", matrix.Quote(keyID))
	}
	return sig, nil
}

// sameKey reports whether two key objects are the same once their
// signatures and unsigned are set aside.
func sameKey(a, b json.RawMessage) bool {
	ca, err1 := strippedCanonical(a)
	cb, err2 := strippedCanonical(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

// publicOf returns a cross-signing key's public key ("" if malformed).
func publicOf(raw json.RawMessage) string {
	var k crossSigningKey
	if json.Unmarshal(raw, &k) != nil || len(k.Keys) != 1 {
		return ""
	}
	for _, v := range k.Keys {
		return v
	}
	return ""
}

// deviceEd25519 returns a device's ed25519 key from its DeviceKeys.
func deviceEd25519(raw json.RawMessage, deviceID string) string {
	var k struct {
		Keys map[string]string `json:"keys"`
	}
	if json.Unmarshal(raw, &k) != nil {
		return ""
	}
	return k.Keys["ed25519:"+deviceID]
}

// UploadSigningKeys is the body of POST /keys/device_signing/upload.
type UploadSigningKeys struct {
	Master      json.RawMessage `json:"master_key"`
	SelfSigning json.RawMessage `json:"self_signing_key"`
	UserSigning json.RawMessage `json:"user_signing_key"`
	// Auth is the user-interactive auth a client sends; todeviced checks
	// none (see UploadCrossSigning).
	Auth json.RawMessage `json:"auth"`
}

func given(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }

// UploadCrossSigning stores the cross-signing keys a user uploaded, checked
// as the spec says: each of the user, with its usage and one ed25519 key,
// the self-signing and user-signing keys signed by the master key (the one
// uploaded, else the stored one). The first master key needs no
// user-interactive auth (MSC3967); re-uploading the stored keys is a no-op;
// any other change of a user who has a master key is refused with
// ErrReplaceNeedsAuth unless the internal API allowed it (replace_allowed)
// within the last ReplaceWindow. todeviced holds no passwords: a homeserver
// in front of it does user-interactive auth itself and stores keys through
// the internal API.
func (r *Service) UploadCrossSigning(ctx context.Context, userID string, k UploadSigningKeys) error {
	if _, err := r.requireLocal(userID); err != nil {
		return err
	}
	keys := map[string]json.RawMessage{}
	pubs := map[string]string{}
	for _, c := range []struct {
		typ string
		raw json.RawMessage
	}{{MasterKey, k.Master}, {SelfSigningKey, k.SelfSigning}, {UserSigningKey, k.UserSigning}} {
		if !given(c.raw) {
			continue
		}
		what := c.typ + " key"
		norm, err := checkKeyObject(what, c.raw, userID, "")
		if err != nil {
			return err
		}
		if pubs[c.typ], _, err = parseCrossSigningKey(what, norm, userID, c.typ); err != nil {
			return err
		}
		keys[c.typ] = norm
	}
	if len(keys) == 0 {
		return matrix.Errorf(matrix.MissingParam, "No cross-signing key given.")
	}
	check := func(stored map[string]json.RawMessage, replaceableUntil time.Time) (bool, error) {
		master, ok := keys[MasterKey]
		if !ok {
			if master, ok = stored[MasterKey]; !ok {
				return false, matrix.Errorf(matrix.MissingParam, "No master key: upload one first, with or before the other keys.")
			}
		}
		masterPub := publicOf(master)
		for _, typ := range []string{SelfSigningKey, UserSigningKey} {
			if raw, ok := keys[typ]; ok {
				if _, err := verifySignature(raw, userID, "ed25519:"+masterPub, masterPub); err != nil {
					return false, matrix.Errorf(matrix.InvalidSignature, "The %s key is not signed by the master key.", typ)
				}
			}
		}
		same := true
		for typ, raw := range keys {
			same = same && bytes.Equal(stored[typ], raw)
		}
		if same {
			return true, nil
		}
		if _, ok := stored[MasterKey]; ok && !time.Now().Before(replaceableUntil) {
			return false, ErrReplaceNeedsAuth
		}
		return false, nil
	}
	changed, err := r.store.UploadCrossSigning(ctx, userID, keys, check)
	if err != nil {
		if _, ok := matrix.AsError(err); ok || errors.Is(err, ErrReplaceNeedsAuth) {
			return err
		}
		return fmt.Errorf("storing cross-signing keys: %w", err)
	}
	if changed {
		r.m.changes.WithLabelValues(ChangeCrossSigning).Inc()
	}
	return nil
}

// AllowCrossSigningReplacement lets a local user replace their
// cross-signing keys through the client API without user-interactive auth
// for ReplaceWindow, and returns until when.
func (r *Service) AllowCrossSigningReplacement(ctx context.Context, userID string) (time.Time, error) {
	if _, err := r.requireLocal(userID); err != nil {
		return time.Time{}, err
	}
	until := time.Now().Add(ReplaceWindow)
	if err := r.store.AllowCrossSigningReplacement(ctx, userID, until); err != nil {
		return time.Time{}, fmt.Errorf("storing the replacement allowance: %w", err)
	}
	return until, nil
}

// SignatureFailure is one entry of the failures of a signatures upload.
type SignatureFailure struct {
	Errcode matrix.Code `json:"errcode"`
	Error   string      `json:"error"`
}

// SignaturesResult is the answer of POST /keys/signatures/upload.
type SignaturesResult struct {
	Failures map[string]map[string]SignatureFailure `json:"failures"`
}

func (res *SignaturesResult) fail(userID, keyID string, err error) {
	e, ok := matrix.AsError(err)
	if !ok {
		e = matrix.Errorf(matrix.Unknown, "%v", err)
	}
	if res.Failures[userID] == nil {
		res.Failures[userID] = map[string]SignatureFailure{}
	}
	res.Failures[userID][keyID] = SignatureFailure{Errcode: e.Code, Error: e.Message}
}

// UploadSignatures stores the signatures signer uploaded (user id -> key id
// -> the signed key object), as the spec and Synapse take them: on the
// signer's own devices by their self-signing key, on the signer's master
// key by their devices, and on other users' master keys by their
// user-signing key. Each key must be the stored one (signatures and
// unsigned aside) and its signature must verify; the ones that do not are
// answered in failures, the others are stored.
func (r *Service) UploadSignatures(ctx context.Context, signer string, body map[string]map[string]json.RawMessage) (SignaturesResult, error) {
	res := SignaturesResult{Failures: map[string]map[string]SignatureFailure{}}
	if _, err := r.requireLocal(signer); err != nil {
		return res, err
	}
	n := 0
	for _, keys := range body {
		n += len(keys)
	}
	if n > MaxSignaturesPerUpload {
		return res, matrix.Errorf(matrix.TooLarge, "At most %d keys may be signed at once.", MaxSignaturesPerUpload)
	}
	users := []string{signer}
	for u, keys := range body {
		if u == signer {
			continue
		}
		if _, err := matrix.ParseUserID(u); err != nil {
			// Never sent to the database.
			for keyID := range keys {
				res.fail(u, keyID, matrix.Errorf(matrix.InvalidParam, "Invalid user id: %v.", err))
			}
			delete(body, u)
			continue
		}
		users = append(users, u)
	}
	cs, err := r.store.CrossSigning(ctx, users)
	if err != nil {
		return res, fmt.Errorf("reading cross-signing keys: %w", err)
	}
	own := cs[signer]
	var sigs []Signature
	if keys := body[signer]; len(keys) > 0 {
		devs, err := r.store.LocalKeys(ctx, map[string][]string{signer: nil})
		if err != nil {
			return res, fmt.Errorf("reading device keys: %w", err)
		}
		devices := map[string]json.RawMessage{}
		for _, d := range devs {
			if d.Keys != nil {
				devices[d.DeviceID] = d.Keys
			}
		}
		for keyID, raw := range keys {
			s, err := selfSignatures(signer, keyID, raw, own, devices)
			if err != nil {
				res.fail(signer, keyID, err)
				continue
			}
			sigs = append(sigs, s...)
		}
	}
	for target, keys := range body {
		if target == signer {
			continue
		}
		for keyID, raw := range keys {
			s, err := otherSignature(signer, target, keyID, raw, own[UserSigningKey], cs[target][MasterKey])
			if err != nil {
				res.fail(target, keyID, err)
				continue
			}
			sigs = append(sigs, s)
		}
	}
	if len(sigs) == 0 {
		return res, nil
	}
	stored, err := r.store.PutSignatures(ctx, signer, sigs)
	if err != nil {
		return res, fmt.Errorf("storing signatures: %w", err)
	}
	if stored > 0 {
		r.m.changes.WithLabelValues(ChangeCrossSigning).Inc()
	}
	return res, nil
}

func checkSignedObject(raw json.RawMessage) error {
	if len(raw) > MaxKeysBytes {
		return matrix.Errorf(matrix.TooLarge, "The signed key is larger than %d bytes.", MaxKeysBytes)
	}
	if err := matrix.CheckJSON(raw, matrix.MaxContentDepth); err != nil {
		return matrix.Errorf(matrix.BadJSON, "The signed key is not acceptable JSON: %v.", err)
	}
	if len(raw) == 0 || raw[0] != '{' {
		return matrix.Errorf(matrix.BadJSON, "The signed key must be a JSON object.")
	}
	return nil
}

// selfSignatures checks the signatures of a user on their own key keyID:
// the master key signed by devices, or a device signed by the self-signing
// key.
func selfSignatures(user, keyID string, raw json.RawMessage, own map[string]json.RawMessage, devices map[string]json.RawMessage) ([]Signature, error) {
	if err := checkSignedObject(raw); err != nil {
		return nil, err
	}
	if master, ok := own[MasterKey]; ok && keyID == publicOf(master) {
		if !sameKey(raw, master) {
			return nil, matrix.Errorf(matrix.InvalidParam, "The signed master key is not the stored one.")
		}
		var out []Signature
		for sigKeyID := range signaturesIn(raw)[user] {
			alg, dev, _ := strings.Cut(sigKeyID, ":")
			if alg != "ed25519" || dev == keyID {
				continue // the master key's own signature
			}
			d, ok := devices[dev]
			if !ok {
				return nil, matrix.Errorf(matrix.NotFound, "Unknown signing device %q.", matrix.Quote(dev))
			}
			sig, err := verifySignature(raw, user, sigKeyID, deviceEd25519(d, dev))
			if err != nil {
				return nil, err
			}
			out = append(out, Signature{TargetUserID: user, TargetKeyID: keyID, TargetPublic: keyID,
				SignerUserID: user, SignerKeyID: sigKeyID, Signature: sig})
		}
		if len(out) == 0 {
			return nil, matrix.Errorf(matrix.InvalidSignature, "No device signature on the master key.")
		}
		return out, nil
	}
	ssk, ok := own[SelfSigningKey]
	if !ok {
		return nil, matrix.Errorf(matrix.NotFound, "No self-signing key to sign devices with.")
	}
	d, ok := devices[keyID]
	if !ok {
		return nil, matrix.Errorf(matrix.NotFound, "Unknown device %q.", matrix.Quote(keyID))
	}
	if !sameKey(raw, d) {
		return nil, matrix.Errorf(matrix.InvalidParam, "The signed device keys are not the stored ones.")
	}
	pub := publicOf(ssk)
	sig, err := verifySignature(raw, user, "ed25519:"+pub, pub)
	if err != nil {
		return nil, err
	}
	return []Signature{{TargetUserID: user, TargetKeyID: keyID, TargetPublic: deviceEd25519(d, keyID),
		SignerUserID: user, SignerKeyID: "ed25519:" + pub, Signature: sig}}, nil
}

// otherSignature checks a signature of signer on another user's master key
// by signer's user-signing key.
func otherSignature(signer, target, keyID string, raw, usk, master json.RawMessage) (Signature, error) {
	if err := checkSignedObject(raw); err != nil {
		return Signature{}, err
	}
	if usk == nil {
		return Signature{}, matrix.Errorf(matrix.NotFound, "No user-signing key to sign other users' keys with.")
	}
	if master == nil {
		return Signature{}, matrix.Errorf(matrix.NotFound, "No master key known for %s.", matrix.Quote(target))
	}
	if keyID != publicOf(master) {
		return Signature{}, matrix.Errorf(matrix.NotFound, "Only the master key of another user can be signed.")
	}
	if !sameKey(raw, master) {
		return Signature{}, matrix.Errorf(matrix.InvalidParam, "The signed master key is not the stored one.")
	}
	pub := publicOf(usk)
	sig, err := verifySignature(raw, signer, "ed25519:"+pub, pub)
	if err != nil {
		return Signature{}, err
	}
	return Signature{TargetUserID: target, TargetKeyID: keyID, TargetPublic: keyID,
		SignerUserID: signer, SignerKeyID: "ed25519:" + pub, Signature: sig}, nil
}

// visible reports whether viewer ("" for another server) sees a signature:
// the key owner's are public, anyone else's only their own.
func (s Signature) visible(viewer string) bool {
	return s.SignerUserID == s.TargetUserID || (viewer != "" && s.SignerUserID == viewer)
}

// mergeSignatures adds to the key object raw (the key keyID of userID,
// whose signed ed25519 key is public) the stored signatures viewer sees.
func mergeSignatures(raw json.RawMessage, userID, keyID, public string, sigs []Signature, viewer string) json.RawMessage {
	var add []Signature
	for _, s := range sigs {
		if s.TargetUserID == userID && s.TargetKeyID == keyID && s.TargetPublic == public && public != "" && s.visible(viewer) {
			add = append(add, s)
		}
	}
	if len(add) == 0 {
		return raw
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil || obj == nil {
		return raw
	}
	all := map[string]map[string]string{}
	if s, ok := obj["signatures"]; ok {
		if json.Unmarshal(s, &all) != nil {
			return raw
		}
	}
	for _, s := range add {
		if all[s.SignerUserID] == nil {
			all[s.SignerUserID] = map[string]string{}
		}
		if _, ok := all[s.SignerUserID][s.SignerKeyID]; !ok {
			all[s.SignerUserID][s.SignerKeyID] = s.Signature
		}
	}
	b, err := json.Marshal(all)
	if err != nil {
		return raw
	}
	obj["signatures"] = b
	out, err := json.Marshal(obj)
	if err != nil {
		return raw
	}
	return out
}

// mergeDeviceSignatures merges signatures into a device's keys.
func mergeDeviceSignatures(raw json.RawMessage, userID, deviceID string, sigs []Signature, viewer string) json.RawMessage {
	return mergeSignatures(raw, userID, deviceID, deviceEd25519(raw, deviceID), sigs, viewer)
}

// mergeMasterSignatures merges signatures into a master key.
func mergeMasterSignatures(raw json.RawMessage, userID string, sigs []Signature, viewer string) json.RawMessage {
	pub := publicOf(raw)
	return mergeSignatures(raw, userID, pub, pub, sigs, viewer)
}

// addSignatures merges into a /keys/query answer the signatures viewer
// ("" for another server) sees on the keys of the users.
func (r *Service) addSignatures(ctx context.Context, viewer string, users []string, res *KeysResult) error {
	if len(users) == 0 {
		return nil
	}
	sigs, err := r.store.Signatures(ctx, users)
	if err != nil {
		return fmt.Errorf("reading signatures: %w", err)
	}
	if len(sigs) == 0 {
		return nil
	}
	for _, u := range users {
		for d, k := range res.DeviceKeys[u] {
			res.DeviceKeys[u][d] = mergeDeviceSignatures(k, u, d, sigs, viewer)
		}
		if k, ok := res.MasterKeys[u]; ok {
			res.MasterKeys[u] = mergeMasterSignatures(k, u, sigs, viewer)
		}
	}
	return nil
}
