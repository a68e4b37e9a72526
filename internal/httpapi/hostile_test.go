package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/servertest"
)

// hostileCase is one request an attacker might make. Refused cases name the
// Matrix error they earn; accepted ones (want 200) carry a marker n that the
// recipient must then receive.
type hostileCase struct {
	name   string
	method string
	path   string
	token  string // "alice", "internal", "admin" or "" for none
	body   string
	status int
	code   string
	n      int // for sends answered 200: the marker bob must receive
}

// manySignatures is a signatures upload naming n keys.
func manySignatures(n int) string {
	var b strings.Builder
	b.WriteString(`{"@alice:localhost":{`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"K%d":{}`, i)
	}
	b.WriteString("}}")
	return b.String()
}

func deep(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

func sendPath(evType, txn string) string {
	return "/_matrix/client/v3/sendToDevice/" + evType + "/" + txn
}

func toBob(content string) string {
	return `{"messages":{"@bob:localhost":{"B1":` + content + `}}}`
}

// hostileCases is one row per class of issue 11's observations, at each
// entry point (client, internal); the federation entry point has its own
// suite beside the federation tests.
func hostileCases() []hostileCase {
	in := "/_todeviced/internal/v1"
	adm := "/_todeviced/admin/v1"
	return []hostileCase{
		// Observation 1: unbounded recursion in the body decoder.
		{name: "7M open brackets", method: "PUT", path: sendPath("m.t", "deep1"), token: "alice",
			body: `{"x":` + strings.Repeat("[", 7_000_000), status: 400, code: "M_BAD_JSON"},
		{name: "1M levels, closed", method: "PUT", path: sendPath("m.t", "deep2"), token: "alice",
			body: `{"x":` + deep(1_000_000) + `,"messages":{}}`, status: 400, code: "M_BAD_JSON"},
		// Observation 2: content no /sync answer could carry.
		{name: "content 10 000 deep", method: "PUT", path: sendPath("m.t", "deep3"), token: "alice",
			body: toBob(`{"x":` + deep(10_000) + `}`), status: 400, code: "M_BAD_JSON"},
		{name: "content 10 000 deep to *", method: "PUT", path: sendPath("m.t", "deep4"), token: "alice",
			body: `{"messages":{"@bob:localhost":{"*":{"x":` + deep(10_000) + `}}}}`, status: 400, code: "M_BAD_JSON"},
		{name: "content at the depth limit", method: "PUT", path: sendPath("m.t", "deep5"), token: "alice",
			body: toBob(`{"n":1,"x":` + deep(matrix.MaxContentDepth-1) + `}`), status: 200, n: 1},
		// Observation 3: NUL and invalid UTF-8 in identifiers.
		{name: "NUL device of a remote user", method: "PUT", path: sendPath("m.t", "nul1"), token: "alice",
			body: `{"messages":{"@carol:remote.test":{"X\u0000":{}}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "NUL device of a local user", method: "PUT", path: sendPath("m.t", "nul2"), token: "alice",
			body: `{"messages":{"@bob:localhost":{"B1\u0000":{}}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "%00 in event type", method: "PUT", path: sendPath("m.t%00", "nul3"), token: "alice",
			body: toBob(`{}`), status: 400, code: "M_INVALID_PARAM"},
		{name: "%00 in txn id", method: "PUT", path: sendPath("m.t", "nul%00"), token: "alice",
			body: toBob(`{}`), status: 400, code: "M_INVALID_PARAM"},
		{name: "invalid UTF-8 txn id", method: "PUT", path: sendPath("m.t", "bad%FF"), token: "alice",
			body: toBob(`{}`), status: 400, code: "M_INVALID_PARAM"},
		{name: "control character in event type", method: "PUT", path: sendPath("m.t%0A", "ctl"), token: "alice",
			body: toBob(`{}`), status: 400, code: "M_INVALID_PARAM"},
		{name: "invalid UTF-8 in content", method: "PUT", path: sendPath("m.t", "utf"), token: "alice",
			body: toBob("{\"s\":\"\xff\"}"), status: 400, code: "M_NOT_JSON"},
		{name: "NUL escape inside content is fine", method: "PUT", path: sendPath("m.t", "nulesc"), token: "alice",
			body: toBob(`{"n":2,"s":"a\u0000b"}`), status: 200, n: 2},
		// Observation 4: what canonical JSON cannot carry, for a remote user.
		{name: "float for a remote user", method: "PUT", path: sendPath("m.t", "float1"), token: "alice",
			body: `{"messages":{"@carol:remote.test":{"C":{"f":1.5}}}}`, status: 400, code: "M_BAD_JSON"},
		{name: "2^53 for a remote user", method: "PUT", path: sendPath("m.t", "float2"), token: "alice",
			body: `{"messages":{"@carol:remote.test":{"C":{"i":9007199254740992}}}}`, status: 400, code: "M_BAD_JSON"},
		{name: "float for a local user", method: "PUT", path: sendPath("m.t", "float3"), token: "alice",
			body: toBob(`{"n":3,"f":1.5}`), status: 200, n: 3},
		// Observation 10: our server name in another case.
		{name: "local user in capitals", method: "PUT", path: sendPath("m.t", "case"), token: "alice",
			body: `{"messages":{"@bob:LOCALHOST":{"B1":{}}}}`, status: 400, code: "M_INVALID_PARAM"},
		// /keys/query.
		{name: "keys/query NUL device", method: "POST", path: "/_matrix/client/v3/keys/query", token: "alice",
			body: `{"device_keys":{"@bob:localhost":["B1\u0000"]}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "keys/query deep body", method: "POST", path: "/_matrix/client/v3/keys/query", token: "alice",
			body: `{"x":` + deep(100_000) + `,"device_keys":{}}`, status: 400, code: "M_BAD_JSON"},
		// /keys/upload and /keys/claim.
		{name: "keys/upload deep body", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"one_time_keys":` + strings.Repeat("[", 3_000_000), status: 400, code: "M_BAD_JSON"},
		{name: "keys/upload NUL in key id", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"one_time_keys":{"signed_curve25519:A\u0000":{"key":"k"}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "keys/upload invalid UTF-8 in algorithm", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: "{\"one_time_keys\":{\"\xff:A\":{\"key\":\"k\"}}}", status: 400, code: "M_NOT_JSON"},
		{name: "keys/upload deep key", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"one_time_keys":{"signed_curve25519:A":{"key":` + deep(40) + `}}}`, status: 400, code: "M_BAD_JSON"},
		{name: "keys/upload float in key", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"one_time_keys":{"signed_curve25519:A":{"key":"k","x":0.5}}}`, status: 400, code: "M_BAD_JSON"},
		{name: "keys/upload huge key", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"one_time_keys":{"signed_curve25519:A":{"key":"` + strings.Repeat("k", 5000) + `"}}}`, status: 413, code: "M_TOO_LARGE"},
		{name: "keys/upload device keys of another user", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"device_keys":{"user_id":"@bob:localhost","device_id":"A1","algorithms":["a"],"keys":{}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "keys/upload signatures not an object", method: "POST", path: "/_matrix/client/v3/keys/upload", token: "alice",
			body: `{"device_keys":{"user_id":"@alice:localhost","device_id":"A1","algorithms":["a"],"keys":{"ed25519:A1":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"},"signatures":[]}}`, status: 400, code: "M_BAD_JSON"},
		{name: "keys/claim NUL device", method: "POST", path: "/_matrix/client/v3/keys/claim", token: "alice",
			body: `{"one_time_keys":{"@bob:localhost":{"B1\u0000":"signed_curve25519"}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "keys/claim NUL algorithm", method: "POST", path: "/_matrix/client/v3/keys/claim", token: "alice",
			body: `{"one_time_keys":{"@bob:localhost":{"B1":"a\u0000"}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "keys/claim local user in capitals", method: "POST", path: "/_matrix/client/v3/keys/claim", token: "alice",
			body: `{"one_time_keys":{"@bob:LOCALHOST":{"B1":"signed_curve25519"}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "keys/claim deep body", method: "POST", path: "/_matrix/client/v3/keys/claim", token: "alice",
			body: `{"one_time_keys":` + deep(100_000) + `}`, status: 400, code: "M_BAD_JSON"},
		{name: "internal: keys/claim NUL user", method: "POST", path: in + "/keys/claim", token: "internal",
			body: `{"one_time_keys":{"@b\u0000:localhost":{"B1":"signed_curve25519"}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: keys/upload unknown device", method: "POST", path: in + "/users/@bob:localhost/devices/NOPE/keys/upload", token: "internal",
			body: `{}`, status: 404, code: "M_NOT_FOUND"},
		// Cross-signing keys and signatures.
		{name: "device_signing deep body", method: "POST", path: "/_matrix/client/v3/keys/device_signing/upload", token: "alice",
			body: `{"x":` + deep(100_000) + `}`, status: 400, code: "M_BAD_JSON"},
		{name: "device_signing float in key", method: "POST", path: "/_matrix/client/v3/keys/device_signing/upload", token: "alice",
			body: `{"master_key":{"user_id":"@alice:localhost","usage":["master"],"keys":{},"f":0.5}}`, status: 400, code: "M_BAD_JSON"},
		{name: "device_signing key not an object", method: "POST", path: "/_matrix/client/v3/keys/device_signing/upload", token: "alice",
			body: `{"master_key":"x"}`, status: 400, code: "M_BAD_JSON"},
		{name: "device_signing NUL in user id", method: "POST", path: "/_matrix/client/v3/keys/device_signing/upload", token: "alice",
			body: `{"master_key":{"user_id":"@alice:localhost\u0000","usage":["master"],"keys":{}}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "device_signing usage not a list", method: "POST", path: "/_matrix/client/v3/keys/device_signing/upload", token: "alice",
			body: `{"master_key":{"user_id":"@alice:localhost","usage":"master","keys":{}}}`, status: 400, code: "M_BAD_JSON"},
		{name: "device_signing huge key", method: "POST", path: "/_matrix/client/v3/keys/device_signing/upload", token: "alice",
			body: `{"master_key":{"user_id":"@alice:localhost","x":"` + strings.Repeat("a", 70_000) + `"}}`, status: 413, code: "M_TOO_LARGE"},
		{name: "signatures deep body", method: "POST", path: "/_matrix/client/v3/keys/signatures/upload", token: "alice",
			body: `{"@alice:localhost":{"A1":` + deep(100_000) + `}}`, status: 400, code: "M_BAD_JSON"},
		{name: "signatures not objects", method: "POST", path: "/_matrix/client/v3/keys/signatures/upload", token: "alice",
			body: `{"@alice:localhost":["A1"]}`, status: 400, code: "M_BAD_JSON"},
		{name: "signatures of junk are failures", method: "POST", path: "/_matrix/client/v3/keys/signatures/upload", token: "alice",
			body: `{"@alice:localhost":{"A1":"x","B\u0000":{"x":` + deep(40) + `}},"@x\u0000:localhost":{"K":{}},"bad":{"K":{"f":0.5}}}`, status: 200},
		{name: "signatures too many", method: "POST", path: "/_matrix/client/v3/keys/signatures/upload", token: "alice",
			body: manySignatures(1001), status: 413, code: "M_TOO_LARGE"},
		{name: "internal: replace_allowed NUL user", method: "POST", path: in + "/users/@eve%00:localhost/cross_signing/replace_allowed", token: "internal",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: replace_allowed remote user", method: "POST", path: in + "/users/@eve:remote.test/cross_signing/replace_allowed", token: "internal",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: signatures NUL user", method: "POST", path: in + "/users/@eve%00:localhost/signatures", token: "internal",
			body: `{}`, status: 400, code: "M_INVALID_PARAM"},
		// Dehydrated devices (MSC3814).
		{name: "dehydrated: deep body", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_data":` + strings.Repeat("[", 3_000_000), status: 400, code: "M_BAD_JSON"},
		{name: "dehydrated: device_data not an object", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":"D1","device_data":"x","device_keys":{}}`, status: 400, code: "M_BAD_JSON"},
		{name: "dehydrated: device_data without algorithm", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":"D1","device_data":{"account":"a"},"device_keys":{}}`, status: 400, code: "M_BAD_JSON"},
		{name: "dehydrated: deep device_data", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":"D1","device_data":{"algorithm":"a","x":` + deep(40) + `},"device_keys":{}}`, status: 400, code: "M_BAD_JSON"},
		{name: "dehydrated: huge device_data", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":"D1","device_data":{"algorithm":"a","x":"` + strings.Repeat("a", 70_000) + `"},"device_keys":{}}`, status: 413, code: "M_TOO_LARGE"},
		{name: "dehydrated: NUL device id", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":"D\u0000","device_data":{"algorithm":"a"},"device_keys":{}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "dehydrated: device id a number", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":7,"device_data":{"algorithm":"a"}}`, status: 400, code: "M_BAD_JSON"},
		{name: "dehydrated: no device keys", method: "PUT", path: dehydratedPath, token: "alice",
			body: `{"device_id":"D1","device_data":{"algorithm":"a"}}`, status: 400, code: "M_MISSING_PARAM"},
		{name: "dehydrated: unsigned device keys", method: "PUT", path: dehydratedPath, token: "alice",
			body:   `{"device_id":"D1","device_data":{"algorithm":"a"},"device_keys":{"user_id":"@alice:localhost","device_id":"D1","algorithms":["a"],"keys":{"ed25519:D1":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}}`,
			status: 400, code: "M_INVALID_PARAM"},
		{name: "dehydrated: events next_batch not a string", method: "POST", path: dehydratedPath + "/D1/events", token: "alice",
			body: `{"next_batch":5}`, status: 400, code: "M_BAD_JSON"},
		{name: "dehydrated: events without a dehydrated device", method: "POST", path: dehydratedPath + "/D1/events", token: "alice",
			body: `{}`, status: 403, code: "M_FORBIDDEN"},
		{name: "dehydrated: events %00 device", method: "POST", path: dehydratedPath + "/D%00/events", token: "alice",
			body: `{}`, status: 403, code: "M_FORBIDDEN"},
		{name: "dehydrated: events bad limit", method: "POST", path: dehydratedPath + "/D1/events?limit=-1", token: "alice",
			body: `{}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "dehydrated: not JSON", method: "PUT", path: dehydratedPath, token: "alice",
			body: `device_data`, status: 400, code: "M_NOT_JSON"},
		{name: "dehydrated: GET none", method: "GET", path: dehydratedPath, token: "alice",
			status: 404, code: "M_NOT_FOUND"},
		{name: "internal: dehydrated NUL user", method: "GET", path: in + "/users/@eve%00:localhost/dehydrated_device", token: "internal",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: dehydrated remote user", method: "PUT", path: in + "/users/@eve:remote.test/dehydrated_device", token: "internal",
			body: `{"device_id":"D1","device_data":{"algorithm":"a"},"device_keys":{}}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: dehydrated events of none", method: "POST", path: in + "/users/@alice:localhost/dehydrated_device/D1/events", token: "internal",
			body: `{"next_batch":"x_1"}`, status: 403, code: "M_FORBIDDEN"},
		// Internal API.
		{name: "internal: %00 in device path", method: "PUT", path: in + "/users/@eve:localhost/devices/E%00", token: "internal",
			body: `{}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: invalid UTF-8 device path", method: "PUT", path: in + "/users/@eve:localhost/devices/E%C3", token: "internal",
			body: `{}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: NUL in display name", method: "PUT", path: in + "/users/@eve:localhost/devices/E1", token: "internal",
			body: `{"display_name":"a\u0000"}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: deep keys", method: "PUT", path: in + "/users/@eve:localhost/devices/E1", token: "internal",
			body: `{"keys":{"x":` + deep(40) + `}}`, status: 400, code: "M_BAD_JSON"},
		{name: "internal: float in keys", method: "PUT", path: in + "/users/@eve:localhost/devices/E1", token: "internal",
			body: `{"keys":{"x":0.5}}`, status: 400, code: "M_BAD_JSON"},
		{name: "internal: deep body", method: "PUT", path: in + "/rooms/!r:localhost/members", token: "internal",
			body: `{"members":` + strings.Repeat("[", 3_000_000), status: 400, code: "M_BAD_JSON"},
		{name: "internal: NUL room id", method: "PUT", path: in + "/rooms/!r%00/encryption", token: "internal",
			body: `{}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "internal: sync NUL device", method: "GET", path: in + "/sync?user_id=@bob:localhost&device_id=B%00", token: "internal",
			status: 400, code: "M_INVALID_PARAM"},
		// Admin API.
		{name: "admin: no secret", method: "GET", path: adm + "/inboxes/largest", status: 401, code: "M_MISSING_TOKEN"},
		{name: "admin: internal secret", method: "GET", path: adm + "/inboxes/largest", token: "internal", status: 401, code: "M_UNKNOWN_TOKEN"},
		{name: "admin: %00 in device path", method: "GET", path: adm + "/users/@bob:localhost/devices/B%00/inbox", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: invalid UTF-8 user", method: "GET", path: adm + "/users/@b%C3:localhost/devices", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: NUL user", method: "GET", path: adm + "/users/@b%00:localhost/devices", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: limit not a number", method: "GET", path: adm + "/inboxes/largest?limit=1e3", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: limit huge", method: "GET", path: adm + "/inboxes/largest?limit=99999999999999999999", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: purge deep body", method: "POST", path: adm + "/users/@bob:localhost/devices/B1/inbox/purge", token: "admin",
			body: `{"type":` + strings.Repeat("[", 60_000), status: 400, code: "M_BAD_JSON"},
		{name: "admin: purge body too large", method: "POST", path: adm + "/users/@bob:localhost/devices/B1/inbox/purge", token: "admin",
			body: `{"type":"` + strings.Repeat("a", 100_000) + `"}`, status: 413, code: "M_TOO_LARGE"},
		{name: "admin: purge NUL type", method: "POST", path: adm + "/users/@bob:localhost/devices/B1/inbox/purge", token: "admin",
			body: `{"type":"m.\u0000"}`, status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: purge invalid UTF-8 sender", method: "POST", path: adm + "/users/@bob:localhost/devices/B1/inbox/purge", token: "admin",
			body: "{\"sender\":\"@\xc3:localhost\"}", status: 400},
		{name: "admin: purge type not a string", method: "POST", path: adm + "/users/@bob:localhost/devices/B1/inbox/purge", token: "admin",
			body: `{"type":5}`, status: 400, code: "M_BAD_JSON"},
		{name: "admin: destinations while federation is off", method: "GET", path: adm + "/federation/destinations", token: "admin",
			status: 404, code: "M_UNRECOGNIZED"},
		{name: "admin: device list NUL user", method: "GET", path: adm + "/users/@r%00:remote.test/device_list", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: device list of this server in another case", method: "GET", path: adm + "/users/@bob:LOCALHOST/device_list", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: resync not a user id", method: "POST", path: adm + "/users/rita/device_list/resync", token: "admin",
			status: 400, code: "M_INVALID_PARAM"},
		{name: "admin: purge unknown device", method: "POST", path: adm + "/users/@bob:localhost/devices/NOPE/inbox/purge", token: "admin",
			body: `{}`, status: 404, code: "M_NOT_FOUND"},
	}
}

// TestHostileInput: every hostile request is refused with the Matrix error
// it earns — never a 5xx, never a crash — and everything answered 200 is
// then delivered by /sync, on both backends (DESIGN invariants 10 and 12).
func TestHostileInput(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in, _ := startAdmin(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		tokens := map[string]string{"alice": "tok-alice", "internal": servertest.Secret, "admin": adminSecret}
		var want []int
		for _, c := range hostileCases() {
			r := in.Do(t, c.method, c.path, tokens[c.token], c.body)
			require.Less(t, r.Status, 500, "%s: a 5xx for bad input: %s", c.name, r.Body)
			require.Equal(t, c.status, r.Status, "%s: %s", c.name, r.Body)
			if c.code != "" {
				require.Equal(t, c.code, r.Errcode(t), "%s: %s", c.name, r.Body)
				require.LessOrEqual(t, len(r.Body), 1024, "%s: the error echoes too much", c.name)
			}
			if c.n != 0 {
				want = append(want, c.n)
			}
		}
		got := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, want, ns(got.ToDevice.Events), "everything answered 200 is delivered, in order")
		// The server is still up and serving.
		in.Send(t, "tok-alice", "m.t", "after", map[string]map[string]any{bob: {"B1": map[string]any{"n": 99}}})
		next := in.Sync(t, "tok-bob", got.NextBatch, 0)
		require.Equal(t, []int{99}, ns(next.ToDevice.Events))
	})
}

// TestUndeliverableRowNeverWedges: content stored before the door refused
// it (written here straight to the store) is skipped, counted and
// acknowledged; the messages around it are delivered and the device moves on
// (DESIGN invariant 13).
func TestUndeliverableRowNeverWedges(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		in.PutDevice(t, bob, "B2", "tok-bob2")
		in.Send(t, "tok-alice", "m.t", "before", map[string]map[string]any{bob: {"B1": map[string]any{"n": 1}}})
		poison := json.RawMessage(`{"x":` + deep(10_000) + `}`)
		a, err := inbox.BuildAccept("localhost", inbox.TxnKey{UserID: alice, DeviceID: "A1", EventType: "m.t", TxnID: "poison"},
			inbox.Messages{bob: {"*": poison}})
		require.NoError(t, err)
		_, err = in.Backend().Inbox().Accept(context.Background(), a)
		require.NoError(t, err)
		in.Send(t, "tok-alice", "m.t", "after", map[string]map[string]any{bob: {"B1": map[string]any{"n": 2}}})

		s := in.Sync(t, "tok-bob", "", 0)
		require.Equal(t, []int{1, 2}, ns(s.ToDevice.Events), "the poison row is skipped, its neighbours delivered")
		s2 := in.Sync(t, "tok-bob", s.NextBatch, 0)
		require.Empty(t, s2.ToDevice.Events, "the skipped row was acknowledged with the rest")

		// The internal /sync of the other recipient skips it too.
		r := in.Do(t, http.MethodGet, "/_todeviced/internal/v1/sync?user_id=@bob:localhost&device_id=B2", servertest.Secret, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.JSONEq(t, `[]`, string(mustField(t, r.Body, "to_device", "events")))

		require.Equal(t, 2.0, counterValue(t, in, "todeviced_messages_dropped_total", "reason", "undeliverable"))
	})
}

// counterValue reads one labelled counter from an instance's registry.
func counterValue(t *testing.T, in *servertest.Instance, name, label, value string) float64 {
	t.Helper()
	mfs, err := in.Registry().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}
