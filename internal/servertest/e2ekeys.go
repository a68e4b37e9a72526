package servertest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/todeviced/todeviced/internal/matrix"
)

// E2EDevice is a device's ed25519 identity for tests of key upload: it
// signs DeviceKeys and one-time keys as a Matrix client does (canonical
// JSON without signatures and unsigned, unpadded base64).
type E2EDevice struct {
	UserID, DeviceID string
	Priv             ed25519.PrivateKey
}

// NewE2EDevice makes a fresh identity.
func NewE2EDevice(userID, deviceID string) *E2EDevice {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return &E2EDevice{UserID: userID, DeviceID: deviceID, Priv: priv}
}

func b64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// KeyID is the device's ed25519 key id.
func (d *E2EDevice) KeyID() string { return "ed25519:" + d.DeviceID }

// Sign adds the device's signature to obj (and returns it).
func (d *E2EDevice) Sign(obj map[string]any) map[string]any {
	signed := map[string]any{}
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			signed[k] = v
		}
	}
	b, err := json.Marshal(signed)
	if err != nil {
		panic(err)
	}
	if b, err = matrix.CanonicalJSON(b); err != nil {
		panic(err)
	}
	obj["signatures"] = map[string]any{d.UserID: map[string]any{d.KeyID(): b64(ed25519.Sign(d.Priv, b))}}
	return obj
}

// DeviceKeys is the device's signed DeviceKeys object.
func (d *E2EDevice) DeviceKeys() map[string]any {
	pub := d.Priv.Public().(ed25519.PublicKey)
	return d.Sign(map[string]any{
		"user_id":    d.UserID,
		"device_id":  d.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]any{
			d.KeyID():                  b64(pub),
			"curve25519:" + d.DeviceID: b64([]byte(fmt.Sprintf("curve-%s-%032d", d.DeviceID, 0)))[:43],
		},
	})
}

// OneTimeKeys are n signed signed_curve25519 keys, ids from "AAAA<from>".
func (d *E2EDevice) OneTimeKeys(from, n int) map[string]any {
	out := map[string]any{}
	for i := from; i < from+n; i++ {
		id := fmt.Sprintf("AAAA%04d", i)
		out["signed_curve25519:"+id] = d.Sign(map[string]any{"key": b64([]byte(fmt.Sprintf("otk-%s-%027d", d.DeviceID, i)))[:43]})
	}
	return out
}

// FallbackKey is one signed signed_curve25519 fallback key.
func (d *E2EDevice) FallbackKey(id string) map[string]any {
	return map[string]any{"signed_curve25519:" + id: d.Sign(map[string]any{"key": b64([]byte("fallback-key-" + id)), "fallback": true})}
}
