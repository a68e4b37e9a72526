package matrix

import (
	"encoding/json"
	"fmt"
)

// SignedJSON is what a signature of a signed JSON object covers (the spec's
// "Signing JSON"): the object without its "signatures" and "unsigned"
// members, as canonical JSON. Server keys, X-Matrix requests, device keys,
// one-time keys and cross-signing keys are all checked over it.
func SignedJSON(obj map[string]json.RawMessage) ([]byte, error) {
	rest := make(map[string]json.RawMessage, len(obj))
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			rest[k] = v
		}
	}
	encoded, err := json.Marshal(rest)
	if err != nil {
		return nil, fmt.Errorf("encoding object to sign: %w", err)
	}
	return CanonicalJSON(encoded)
}
