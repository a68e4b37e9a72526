package storetest

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/matrix"
)

// Signer is an ed25519 key that signs key objects as Matrix clients do
// (test support for cross-signing, here and in the HTTP tests).
type Signer struct {
	Pub  string
	priv ed25519.PrivateKey
}

// NewSigner returns the signer of a fixed seed.
func NewSigner(seed byte) Signer {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	priv := ed25519.NewKeyFromSeed(s)
	return Signer{Pub: base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)), priv: priv}
}

// KeyID is the key id of a cross-signing key: its public key.
func (s Signer) KeyID() string { return "ed25519:" + s.Pub }

// Sign adds user's signature with keyID to the key object raw.
func (s Signer) Sign(raw json.RawMessage, user, keyID string) json.RawMessage {
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		panic(err)
	}
	sigs, _ := obj["signatures"].(map[string]any)
	unsigned, hasUnsigned := obj["unsigned"]
	delete(obj, "signatures")
	delete(obj, "unsigned")
	b, _ := json.Marshal(obj)
	c, err := matrix.CanonicalJSON(b)
	if err != nil {
		panic(err)
	}
	if sigs == nil {
		sigs = map[string]any{}
	}
	mine, _ := sigs[user].(map[string]any)
	if mine == nil {
		mine = map[string]any{}
	}
	mine[keyID] = base64.RawStdEncoding.EncodeToString(ed25519.Sign(s.priv, c))
	sigs[user] = mine
	obj["signatures"] = sigs
	if hasUnsigned {
		obj["unsigned"] = unsigned
	}
	out, _ := json.Marshal(obj)
	return out
}

// CrossSigningKey is user's unsigned cross-signing key of this signer.
func (s Signer) CrossSigningKey(user, usage string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"user_id":%q,"usage":[%q],"keys":{"ed25519:%s":%q}}`, user, usage, s.Pub, s.Pub))
}

// DeviceKeys are the keys of user's device whose ed25519 key is this
// signer, signed by it.
func (s Signer) DeviceKeys(user, device string) json.RawMessage {
	raw := json.RawMessage(fmt.Sprintf(`{"user_id":%q,"device_id":%q,"algorithms":["m.olm.v1.curve25519-aes-sha2","m.megolm.v1.aes-sha2"],"keys":{"curve25519:%s":"c%s","ed25519:%s":%q}}`,
		user, device, device, s.Pub[:8], device, s.Pub))
	return s.Sign(raw, user, "ed25519:"+device)
}

// signatureOf reads signatures[user][keyID] of a key object ("" if none).
func signatureOf(t *testing.T, raw json.RawMessage, user, keyID string) string {
	t.Helper()
	var obj struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	require.NoError(t, json.Unmarshal(raw, &obj))
	return obj.Signatures[user][keyID]
}

func testCrossSigningSignatures(t *testing.T, e *Env) {
	b := e.Open(Options{})
	dl := lists(b)
	require.NoError(t, dl.SetRoomEncrypted(ctx(t), roomE))
	member(t, dl, roomE, alice, "join")
	member(t, dl, roomE, bob, "join")
	member(t, dl, roomE, remoteU, "join")
	dev, am, as, au := NewSigner(1), NewSigner(2), NewSigner(3), NewSigner(4)
	bm, bu := NewSigner(5), NewSigner(6)
	putDevice(t, dl, alice, "A1", dev.DeviceKeys(alice, "A1"))

	// The first keys need no user-interactive auth; the same keys again
	// change nothing.
	keys := devicelists.UploadSigningKeys{
		Master:      am.CrossSigningKey(alice, "master"),
		SelfSigning: am.Sign(as.CrossSigningKey(alice, "self_signing"), alice, am.KeyID()),
		UserSigning: am.Sign(au.CrossSigningKey(alice, "user_signing"), alice, am.KeyID()),
	}
	h0 := head(t, dl)
	require.NoError(t, dl.UploadCrossSigning(ctx(t), alice, keys))
	h1 := head(t, dl)
	require.Equal(t, []string{alice}, changes(t, dl, bob, h0, h1).Changed, "new cross-signing keys are a change")
	require.NoError(t, dl.UploadCrossSigning(ctx(t), alice, keys))
	require.Equal(t, h1, head(t, dl), "the same keys again")

	// Replacing them needs the homeserver's allowance.
	other := NewSigner(9)
	err := dl.UploadCrossSigning(ctx(t), alice, devicelists.UploadSigningKeys{Master: other.CrossSigningKey(alice, "master")})
	require.ErrorIs(t, err, devicelists.ErrReplaceNeedsAuth)
	err = dl.UploadCrossSigning(ctx(t), alice, devicelists.UploadSigningKeys{
		SelfSigning: am.Sign(other.CrossSigningKey(alice, "self_signing"), alice, am.KeyID())})
	require.ErrorIs(t, err, devicelists.ErrReplaceNeedsAuth, "any new key of a user with a master key")
	require.Equal(t, h1, head(t, dl))

	// Alice's self-signing key signs her device: everyone sharing a room
	// sees her changed and the signature.
	up, err := dl.UploadSignatures(ctx(t), alice, map[string]map[string]json.RawMessage{
		alice: {"A1": as.Sign(dev.DeviceKeys(alice, "A1"), alice, as.KeyID())},
	})
	require.NoError(t, err)
	require.Empty(t, up.Failures)
	h2 := head(t, dl)
	require.Greater(t, h2, h1)
	require.Equal(t, []string{alice}, changes(t, dl, bob, h1, h2).Changed)
	q, err := dl.QueryKeys(ctx(t), bob, devicelists.KeysQuery{DeviceKeys: map[string][]string{alice: nil}})
	require.NoError(t, err)
	require.NotEmpty(t, signatureOf(t, q.DeviceKeys[alice]["A1"], alice, as.KeyID()), "merged into the device keys")
	require.NotEmpty(t, signatureOf(t, q.DeviceKeys[alice]["A1"], alice, "ed25519:A1"), "the device's own kept")
	fed, err := dl.QueryLocalKeys(ctx(t), map[string][]string{alice: nil})
	require.NoError(t, err)
	require.NotEmpty(t, signatureOf(t, fed.DeviceKeys[alice]["A1"], alice, as.KeyID()), "other servers see it too")
	edus, err := b.Devices().PeekOutbox(ctx(t), "remote.test", 100)
	require.NoError(t, err)
	last := edus[len(edus)-1]
	require.Equal(t, "m.device_list_update", last.Type)
	var update struct {
		Content struct {
			DeviceID string          `json:"device_id"`
			Keys     json.RawMessage `json:"keys"`
		} `json:"content"`
	}
	require.NoError(t, json.Unmarshal(last.EDU, &update))
	require.Equal(t, "A1", update.Content.DeviceID)
	require.NotEmpty(t, signatureOf(t, update.Content.Keys, alice, as.KeyID()), "and are told with the keys")

	_, err = dl.UploadSignatures(ctx(t), alice, map[string]map[string]json.RawMessage{
		alice: {"A1": as.Sign(dev.DeviceKeys(alice, "A1"), alice, as.KeyID())},
	})
	require.NoError(t, err)
	require.Equal(t, h2, head(t, dl), "the same signature again is no change")

	// A bad signature is a failure, stored nowhere.
	up, err = dl.UploadSignatures(ctx(t), alice, map[string]map[string]json.RawMessage{
		alice: {"A1": other.Sign(dev.DeviceKeys(alice, "A1"), alice, as.KeyID())},
	})
	require.NoError(t, err)
	require.Equal(t, matrix.InvalidSignature, up.Failures[alice]["A1"].Errcode)
	require.Equal(t, h2, head(t, dl))

	// Alice's device signs her master key.
	_, err = dl.UploadSignatures(ctx(t), alice, map[string]map[string]json.RawMessage{
		alice: {am.Pub: dev.Sign(am.CrossSigningKey(alice, "master"), alice, "ed25519:A1")},
	})
	require.NoError(t, err)
	h3 := head(t, dl)
	require.Equal(t, []string{alice}, changes(t, dl, bob, h2, h3).Changed)
	edus, err = b.Devices().PeekOutbox(ctx(t), "remote.test", 100)
	require.NoError(t, err)
	last = edus[len(edus)-1]
	require.Equal(t, "m.signing_key_update", last.Type)
	var signing struct {
		Content struct {
			MasterKey json.RawMessage `json:"master_key"`
		} `json:"content"`
	}
	require.NoError(t, json.Unmarshal(last.EDU, &signing))
	require.NotEmpty(t, signatureOf(t, signing.Content.MasterKey, alice, "ed25519:A1"))
	queued := len(edus)

	// Bob signs Alice's master key: only Bob sees Alice changed, and only
	// Bob sees his signature.
	require.NoError(t, dl.UploadCrossSigning(ctx(t), bob, devicelists.UploadSigningKeys{
		Master:      bm.CrossSigningKey(bob, "master"),
		UserSigning: bm.Sign(bu.CrossSigningKey(bob, "user_signing"), bob, bm.KeyID()),
	}))
	h4 := head(t, dl)
	up, err = dl.UploadSignatures(ctx(t), bob, map[string]map[string]json.RawMessage{
		alice: {am.Pub: bu.Sign(am.CrossSigningKey(alice, "master"), bob, bu.KeyID())},
	})
	require.NoError(t, err)
	require.Empty(t, up.Failures)
	h5 := head(t, dl)
	require.Greater(t, h5, h4)
	require.Equal(t, []string{alice}, changes(t, dl, bob, h4, h5).Changed, "the signer sees the signed user changed")
	require.Empty(t, changes(t, dl, alice, h4, h5).Changed, "nobody else does")
	edus, err = b.Devices().PeekOutbox(ctx(t), "remote.test", 100)
	require.NoError(t, err)
	for _, e := range edus[queued:] {
		require.NotContains(t, string(e.EDU), bu.KeyID(), "a signature on another user's key stays here")
	}
	q, err = dl.QueryKeys(ctx(t), bob, devicelists.KeysQuery{DeviceKeys: map[string][]string{alice: nil}})
	require.NoError(t, err)
	require.NotEmpty(t, signatureOf(t, q.MasterKeys[alice], bob, bu.KeyID()))
	require.NotEmpty(t, signatureOf(t, q.MasterKeys[alice], alice, "ed25519:A1"), "the owner's device signature")
	q, err = dl.QueryKeys(ctx(t), alice, devicelists.KeysQuery{DeviceKeys: map[string][]string{alice: nil}})
	require.NoError(t, err)
	require.Empty(t, signatureOf(t, q.MasterKeys[alice], bob, bu.KeyID()), "only the signer sees it")
	fed, err = dl.QueryLocalKeys(ctx(t), map[string][]string{alice: nil})
	require.NoError(t, err)
	require.Empty(t, signatureOf(t, fed.MasterKeys[alice], bob, bu.KeyID()), "other servers do not see it")

	// A user-signing key signs only master keys.
	up, err = dl.UploadSignatures(ctx(t), bob, map[string]map[string]json.RawMessage{
		alice: {"A1": bu.Sign(dev.DeviceKeys(alice, "A1"), bob, bu.KeyID())},
	})
	require.NoError(t, err)
	require.Equal(t, matrix.NotFound, up.Failures[alice]["A1"].Errcode)

	// With the homeserver's allowance the master key is replaced; the
	// signatures on the old one are no longer shown.
	_, err = dl.AllowCrossSigningReplacement(ctx(t), alice)
	require.NoError(t, err)
	require.NoError(t, dl.UploadCrossSigning(ctx(t), alice, devicelists.UploadSigningKeys{Master: other.CrossSigningKey(alice, "master")}))
	q, err = dl.QueryKeys(ctx(t), bob, devicelists.KeysQuery{DeviceKeys: map[string][]string{alice: nil}})
	require.NoError(t, err)
	require.Empty(t, signatureOf(t, q.MasterKeys[alice], bob, bu.KeyID()))

	// Pruning the stream takes the signature positions with it.
	require.NoError(t, dl.PruneStream(ctx(t), -time.Hour))
	st, err := b.Devices().StreamState(ctx(t))
	require.NoError(t, err)
	require.Equal(t, st.Head, st.PrunedBelow)
}
