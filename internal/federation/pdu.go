package federation

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"

	"github.com/todeviced/todeviced/internal/matrix"
)

// pduError is what todeviced answers for every PDU: it holds no rooms.
const pduError = "This server only handles to-device messages and device lists; it does not accept PDUs."

// PDUEventIDs names a PDU for a /send answer. Room versions 1 and 2 carry
// the id in the event; later versions derive it from the reference hash
// (URL-safe unpadded base64, from version 4, of the SHA-256 of the redacted
// event without signatures, unsigned and age_ts, in canonical JSON). The
// redaction rules depend on the room version, which only the room knows, so
// this returns the id under the rules of versions 9–10 (also right for most
// events of versions 4–8; version 10 is what most servers create) and, when
// it differs, under those of versions 11 and later. The origin finds its
// event's id among them; the other is ignored.
func PDUEventIDs(pdu json.RawMessage) ([]string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(pdu, &obj); err != nil || obj == nil {
		return nil, errors.New("PDU is not a JSON object")
	}
	if raw, ok := obj["event_id"]; ok {
		var id string
		if err := json.Unmarshal(raw, &id); err == nil && id != "" {
			return []string{id}, nil
		}
	}
	var ids []string
	for _, rules := range []redactionRules{rulesV9, rulesV11} {
		id, err := referenceHashID(obj, rules)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// redactionRules are what the redaction algorithm of a room version keeps.
type redactionRules struct {
	// top are the top-level keys kept, besides signatures (which the
	// reference hash drops anyway).
	top map[string]bool
	// content are the content keys kept per event type; a nil list keeps
	// all of them, a missing type none.
	content map[string][]string
	// signedInvite keeps third_party_invite.signed of m.room.member.
	signedInvite bool
}

var rulesV9 = redactionRules{
	top: map[string]bool{
		"event_id": true, "type": true, "room_id": true, "sender": true, "state_key": true,
		"content": true, "hashes": true, "depth": true, "prev_events": true, "prev_state": true,
		"auth_events": true, "origin": true, "origin_server_ts": true, "membership": true,
	},
	content: map[string][]string{
		"m.room.member":             {"membership", "join_authorised_via_users_server"},
		"m.room.create":             {"creator"},
		"m.room.join_rules":         {"join_rule", "allow"},
		"m.room.power_levels":       {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"},
		"m.room.history_visibility": {"history_visibility"},
	},
}

var rulesV11 = redactionRules{
	top: map[string]bool{
		"event_id": true, "type": true, "room_id": true, "sender": true, "state_key": true,
		"content": true, "hashes": true, "depth": true, "prev_events": true,
		"auth_events": true, "origin_server_ts": true,
	},
	content: map[string][]string{
		"m.room.member":             {"membership", "join_authorised_via_users_server", "third_party_invite"},
		"m.room.create":             nil,
		"m.room.join_rules":         {"join_rule", "allow"},
		"m.room.power_levels":       {"ban", "events", "events_default", "invite", "kick", "redact", "state_default", "users", "users_default"},
		"m.room.history_visibility": {"history_visibility"},
		"m.room.redaction":          {"redacts"},
	},
	signedInvite: true,
}

func referenceHashID(obj map[string]json.RawMessage, rules redactionRules) (string, error) {
	redacted, err := redact(obj, rules)
	if err != nil {
		return "", err
	}
	encoded, err := json.Marshal(redacted)
	if err != nil {
		return "", err
	}
	canonical, err := matrix.CanonicalJSON(encoded)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(canonical)
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

func redact(obj map[string]json.RawMessage, rules redactionRules) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(rules.top))
	for k, v := range obj {
		if rules.top[k] {
			out[k] = v
		}
	}
	raw, ok := obj["content"]
	if !ok {
		return out, nil
	}
	var eventType string
	if t, ok := obj["type"]; ok {
		_ = json.Unmarshal(t, &eventType)
	}
	keep, known := rules.content[eventType]
	if known && keep == nil {
		return out, nil
	}
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
	if tpi, ok := kept["third_party_invite"]; ok && rules.signedInvite {
		// Of third_party_invite, only "signed" survives.
		var inv map[string]json.RawMessage
		if json.Unmarshal(tpi, &inv) == nil && inv["signed"] != nil {
			b, err := json.Marshal(map[string]json.RawMessage{"signed": inv["signed"]})
			if err != nil {
				return nil, err
			}
			kept["third_party_invite"] = b
		} else {
			delete(kept, "third_party_invite")
		}
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return nil, err
	}
	out["content"] = b
	return out, nil
}
