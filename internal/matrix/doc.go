// Package matrix is todeviced's Matrix vocabulary, as gomatrixserverlib's
// spec package is Dendrite's: the words every layer shares and none owns.
//
//   - Identifiers: user ids (ParseUserID), server names (ParseServerName,
//     ValidateServerName, SameServer) and the opaque ids (ValidateID and its
//     per-kind forms), with the spec's grammars and the rule of DESIGN
//     invariant 12: valid UTF-8, no control characters, bounded lengths.
//   - Errors: the Matrix errcodes (Code) and the error a request earns
//     (Error, Errorf); a domain package decides which one, httpapi turns it
//     into a response in one place. Anything that is not an *Error is an
//     internal failure (500 M_UNKNOWN).
//   - JSON: the limits every accepted value meets so that it can be emitted
//     again (MaxDepth, MaxContentDepth, CheckJSON, CheckCanonical), canonical
//     JSON (CanonicalJSON) as signatures and federation need it, JSON
//     written by hand exactly as encoding/json writes it (AppendJSONString,
//     AppendJSONValue) for the hot answers, and Quote for echoing client
//     input in errors.
//   - EDU types: the names of the EDUs todeviced sends and receives.
package matrix

// The EDU types todeviced sends and receives.
const (
	EDUDirectToDevice   = "m.direct_to_device"
	EDUDeviceListUpdate = "m.device_list_update"
	EDUSigningKeyUpdate = "m.signing_key_update"
)
