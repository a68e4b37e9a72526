package matrixfed

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/todeviced/todeviced/internal/matrix"
)

// ErrMissingSignature is wrapped by VerifyJSON when the object carries no
// signature for the requested server name and key ID.
var ErrMissingSignature = errors.New("signature missing")

// ErrInvalidSignature is wrapped by VerifyJSON when a signature is present but
// does not verify (or cannot be decoded).
var ErrInvalidSignature = errors.New("signature invalid")

// algorithmEd25519 is the only signing algorithm Matrix defines.
const algorithmEd25519 = "ed25519"

// SignJSON signs the JSON object raw as serverName with the key identified by
// keyID (for example "ed25519:abc"), following the spec's "Signing JSON"
// algorithm: the signature covers the canonical encoding of the object
// without its "signatures" and "unsigned" members, and is added as unpadded
// base64 under signatures[serverName][keyID]. Signatures already present (of
// other servers or other keys) are kept, one for the same server and key is
// replaced, and "unsigned" is carried over untouched.
//
// The result is the canonical JSON encoding of the signed object.
func SignJSON(serverName, keyID string, key ed25519.PrivateKey, raw []byte) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("signing JSON as %s: private key has %d bytes, want %d", serverName, len(key), ed25519.PrivateKeySize)
	}
	obj, err := parseSignableObject(raw)
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: %w", serverName, err)
	}
	signatures, err := parseSignatures(obj["signatures"])
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: %w", serverName, err)
	}
	payload, err := matrix.SignedJSON(obj)
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: %w", serverName, err)
	}
	sig := ed25519.Sign(key, payload)

	if signatures[serverName] == nil {
		signatures[serverName] = make(map[string]json.RawMessage)
	}
	encoded, err := json.Marshal(base64.RawStdEncoding.EncodeToString(sig))
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: encoding signature: %w", serverName, err)
	}
	signatures[serverName][keyID] = encoded
	sigJSON, err := json.Marshal(signatures)
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: encoding signatures: %w", serverName, err)
	}
	obj["signatures"] = sigJSON
	whole, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: encoding signed object: %w", serverName, err)
	}
	out, err := matrix.CanonicalJSON(whole)
	if err != nil {
		return nil, fmt.Errorf("signing JSON as %s: %w", serverName, err)
	}
	return out, nil
}

// VerifyJSON checks that the JSON object raw carries a valid signature by
// serverName with the key keyID, made with the private half of pub. It
// returns nil only if the signature verifies over the canonical encoding of
// the object without "signatures" and "unsigned"; otherwise the error wraps
// ErrMissingSignature or ErrInvalidSignature, or describes why raw is not a
// signable object.
func VerifyJSON(serverName, keyID string, pub ed25519.PublicKey, raw []byte) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("verifying JSON signed by %s: public key has %d bytes, want %d", serverName, len(pub), ed25519.PublicKeySize)
	}
	obj, err := parseSignableObject(raw)
	if err != nil {
		return fmt.Errorf("verifying JSON signed by %s: %w", serverName, err)
	}
	signatures, err := parseSignatures(obj["signatures"])
	if err != nil {
		return fmt.Errorf("verifying JSON signed by %s: %w", serverName, err)
	}
	rawSig, ok := signatures[serverName][keyID]
	if !ok {
		return fmt.Errorf("verifying JSON signed by %s: %w for key %s", serverName, ErrMissingSignature, keyID)
	}
	var sigText string
	if err := json.Unmarshal(rawSig, &sigText); err != nil {
		return fmt.Errorf("verifying JSON signed by %s: %w: signature for %s is not a string", serverName, ErrInvalidSignature, keyID)
	}
	sig, err := DecodeBase64(sigText)
	if err != nil {
		return fmt.Errorf("verifying JSON signed by %s: %w: decoding signature for %s: %w", serverName, ErrInvalidSignature, keyID, err)
	}
	payload, err := matrix.SignedJSON(obj)
	if err != nil {
		return fmt.Errorf("verifying JSON signed by %s: %w", serverName, err)
	}
	if !ed25519.Verify(pub, payload, sig) {
		return fmt.Errorf("verifying JSON signed by %s: %w for key %s", serverName, ErrInvalidSignature, keyID)
	}
	return nil
}

// DecodeBase64 decodes a base64 string the way the spec asks receivers to:
// with or without "=" padding, and (as some implementations emit it) in the
// URL-safe alphabet as well as the standard one. Trailing bits that are not
// zero are tolerated, as other implementations do; the spec's own test seed
// has them.
func DecodeBase64(s string) ([]byte, error) {
	trimmed := strings.TrimRight(s, "=")
	if strings.ContainsAny(trimmed, "-_") {
		return base64.RawURLEncoding.DecodeString(trimmed)
	}
	return base64.RawStdEncoding.DecodeString(trimmed)
}

// EncodeBase64 encodes b as unpadded standard base64, the encoding Matrix
// uses for keys and signatures.
func EncodeBase64(b []byte) string {
	return base64.RawStdEncoding.EncodeToString(b)
}

// parseSignableObject checks that raw is a canonicalizable JSON object and
// splits it into its members. Canonicalizing first rejects duplicate keys,
// which encoding/json would otherwise silently collapse (keeping the last),
// letting a signer and a verifier see different objects.
func parseSignableObject(raw []byte) (map[string]json.RawMessage, error) {
	if _, err := matrix.CanonicalJSON(raw); err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("%w: value is not a JSON object", matrix.ErrNotCanonicalizable)
	}
	return obj, nil
}

// parseSignatures decodes a "signatures" member, which must be an object of
// objects when present.
func parseSignatures(raw json.RawMessage) (map[string]map[string]json.RawMessage, error) {
	signatures := make(map[string]map[string]json.RawMessage)
	if raw == nil {
		return signatures, nil
	}
	if err := json.Unmarshal(raw, &signatures); err != nil || signatures == nil {
		return nil, errors.New(`"signatures" is not an object of objects`)
	}
	return signatures, nil
}
