package federation

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
)

// pduError is what todeviced answers for every PDU: it holds no rooms.
const pduError = "This server only handles to-device messages and device lists; it does not accept PDUs."

// PDUEventID names a PDU in a /send answer. Room versions 1 and 2 carry the
// id in the event; later versions derive it from the reference hash, whose
// exact input depends on the room version's redaction rules, which we cannot
// know without the room. This computes it as room versions 11 and later do
// (URL-safe unpadded base64 of the SHA-256 of the redacted event without
// signatures, unsigned and age_ts, in canonical JSON): exact for current
// rooms, best effort for older ones.
func PDUEventID(pdu json.RawMessage) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(pdu, &obj); err != nil || obj == nil {
		return "", errors.New("PDU is not a JSON object")
	}
	if raw, ok := obj["event_id"]; ok {
		var id string
		if err := json.Unmarshal(raw, &id); err == nil && id != "" {
			return id, nil
		}
	}
	redacted, err := redactV11(obj)
	if err != nil {
		return "", err
	}
	encoded, err := json.Marshal(redacted)
	if err != nil {
		return "", err
	}
	canonical, err := CanonicalJSON(encoded)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(canonical)
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// v11 redaction: the top-level keys an event keeps (signatures is kept by
// redaction but dropped from the reference hash, like unsigned and age_ts).
var redactionKeepsV11 = map[string]bool{
	"event_id": true, "type": true, "room_id": true, "sender": true, "state_key": true,
	"content": true, "hashes": true, "depth": true, "prev_events": true,
	"auth_events": true, "origin_server_ts": true,
}

// The content keys each event type keeps under v11 redaction; nil keeps all.
var contentKeepsV11 = map[string][]string{
	"m.room.member":             {"membership", "join_authorised_via_users_server", "third_party_invite"},
	"m.room.create":             nil,
	"m.room.join_rules":         {"join_rule", "allow"},
	"m.room.power_levels":       {"ban", "events", "events_default", "invite", "kick", "redact", "state_default", "users", "users_default"},
	"m.room.history_visibility": {"history_visibility"},
	"m.room.redaction":          {"redacts"},
}

func redactV11(obj map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(redactionKeepsV11))
	for k, v := range obj {
		if redactionKeepsV11[k] {
			out[k] = v
		}
	}
	var eventType string
	if raw, ok := obj["type"]; ok {
		_ = json.Unmarshal(raw, &eventType)
	}
	keep, known := contentKeepsV11[eventType]
	if raw, ok := obj["content"]; ok && !(known && keep == nil) {
		var content map[string]json.RawMessage
		if err := json.Unmarshal(raw, &content); err != nil {
			return nil, errors.New("PDU content is not a JSON object")
		}
		kept := map[string]json.RawMessage{}
		for _, k := range keep {
			if v, ok := content[k]; ok {
				kept[k] = v
			}
		}
		if eventType == "m.room.member" {
			// Of third_party_invite, only "signed" survives.
			if tpi, ok := kept["third_party_invite"]; ok {
				var inv map[string]json.RawMessage
				if json.Unmarshal(tpi, &inv) == nil && inv["signed"] != nil {
					b, _ := json.Marshal(map[string]json.RawMessage{"signed": inv["signed"]})
					kept["third_party_invite"] = b
				} else {
					delete(kept, "third_party_invite")
				}
			}
		}
		b, err := json.Marshal(kept)
		if err != nil {
			return nil, err
		}
		out["content"] = b
	}
	return out, nil
}
