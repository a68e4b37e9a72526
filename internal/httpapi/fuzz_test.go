package httpapi_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// The fuzz targets drive whole handlers through the real router of one
// SQLite instance per fuzzing process. Their property is DESIGN invariants
// 10, 12 and 13: no input earns a 5xx or a crash, every answer is valid
// JSON, errors quote at most a short prefix of the input, and whatever was
// answered 200 leaves the recipient able to sync.

func fuzzInstance(f *testing.F) *servertest.Instance {
	in := servertest.Start(f, servertest.Config("sqlite:"+filepath.Join(f.TempDir(), "fuzz.db")), server.Options{})
	in.PutDevice(f, alice, "A1", "tok-alice")
	in.PutDevice(f, bob, "B1", "tok-bob")
	return in
}

// checkAnswer fails on a 5xx, a body that is not valid JSON, or an error
// that echoes more than a short prefix of what it quotes.
func checkAnswer(t *testing.T, what string, r servertest.Response) {
	t.Helper()
	if r.Status >= 500 {
		t.Fatalf("%s: %d %s", what, r.Status, r.Body)
	}
	if !json.Valid(r.Body) || !utf8.Valid(r.Body) {
		t.Fatalf("%s: answer is not valid JSON: %q", what, r.Body)
	}
	if r.Status >= 400 && len(r.Body) > 1024 {
		t.Fatalf("%s: a %d error of %d bytes echoes too much", what, r.Status, len(r.Body))
	}
}

func FuzzSendToDevice(f *testing.F) {
	for _, c := range hostileCases() {
		if c.token == "alice" && c.method == http.MethodPut && len(c.body) < 4096 {
			f.Add("m.t", "seed", c.body)
		}
	}
	f.Add("m.room.encrypted", "m1.0", `{"messages":{"@bob:localhost":{"*":{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":{}}}}}`)
	f.Add("m.t\x00", "x", `{"messages":{}}`)
	f.Add("m.t", "\xff", `{"messages":{"@bob:localhost":{"B1":{}}}}`)
	f.Add("m.t", "y", `{"messages":{"@carol:remote.test":{"C":{"f":1e400}}}}`)
	in := fuzzInstance(f)
	since := in.Sync(f, "tok-bob", "", 0).NextBatch
	f.Fuzz(func(t *testing.T, eventType, txnID, body string) {
		path := "/_matrix/client/v3/sendToDevice/" + url.PathEscape(eventType) + "/" + url.PathEscape(txnID)
		r := in.Do(t, http.MethodPut, path, "tok-alice", body)
		checkAnswer(t, "sendToDevice", r)
		if r.Status != http.StatusOK {
			return
		}
		// Accepted: bob's next sync must answer (and acknowledges it, so
		// the inbox stays small).
		s := in.RawSync(t.Context(), t, "tok-bob", since, 0)
		checkAnswer(t, "sync after an accepted send", s)
		if s.Status != http.StatusOK {
			t.Fatalf("sync after an accepted send: %d %s", s.Status, s.Body)
		}
		var sr servertest.SyncResponse
		if err := json.Unmarshal(s.Body, &sr); err != nil || sr.NextBatch == "" {
			t.Fatalf("sync answer: %v %s", err, s.Body)
		}
		since = sr.NextBatch
	})
}

func FuzzSyncSince(f *testing.F) {
	in := fuzzInstance(f)
	tok := in.Sync(f, "tok-bob", "", 0).NextBatch
	for _, s := range []string{tok, tok + "0", "0_0_0_0_0", "x", "_____", tok[:len(tok)/2], "zz_1_0_99999999_0", "a_9223372036854775807_0_1_1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, since string) {
		q := url.Values{"since": {since}, "timeout": {"0"}}
		r := in.Do(t, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), "tok-bob", nil)
		checkAnswer(t, "sync", r)
		k := in.Do(t, http.MethodGet, "/_matrix/client/v3/keys/changes?"+url.Values{"from": {since}, "to": {tok}}.Encode(), "tok-bob", nil)
		checkAnswer(t, "keys/changes", k)
	})
}

func FuzzInternalAPI(f *testing.F) {
	for _, c := range hostileCases() {
		if c.token == "internal" && len(c.body) < 4096 {
			f.Add(c.method, c.path, c.body)
		}
	}
	f.Add("PUT", "/users/@eve:localhost/devices/E1", `{"access_token":"t","display_name":"Eve","keys":{"user_id":"@eve:localhost","device_id":"E1"}}`)
	f.Add("PUT", "/rooms/!r:localhost/members", `{"members":{"@eve:localhost":{"membership":"join","stream_ordering":1}}}`)
	f.Add("PUT", "/users/@eve:localhost/cross_signing", `{"master_key":{"user_id":"@eve:localhost","usage":["master"],"keys":{}}}`)
	f.Add("GET", "/sync?user_id=@bob:localhost&device_id=B1&to_device_since=x", ``)
	f.Add("GET", "/keys/changes?user_id=@bob:localhost&from=a_1&to=a_2", ``)
	f.Add("POST", "/sync/extensions?user_id=@bob:localhost&device_id=B1&device_lists_since=a_1", `{"extensions":{"to_device":{"enabled":true,"since":"x"},"e2ee":{"enabled":true}}}`)
	in := fuzzInstance(f)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		switch method {
		case http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete:
		default:
			return
		}
		u, err := url.Parse("http://x/_todeviced/internal/v1" + path)
		if err != nil || u.Host != "x" {
			return
		}
		if method == http.MethodGet || method == http.MethodPost {
			// Never a long-poll (GET /sync, POST /sync/extensions): the
			// fuzzer would wait on it.
			q := u.Query()
			q.Set("timeout", "0")
			u.RawQuery = q.Encode()
		}
		r := in.Do(t, method, u.RequestURI(), servertest.Secret, body)
		checkAnswer(t, method+" "+path, r)
		if strings.Contains(strings.ToLower(u.Path), "bob") {
			return // the input may have deleted or re-keyed bob's device
		}
		// Nothing an input did to others keeps bob from syncing.
		s := in.RawSync(t.Context(), t, "tok-bob", "", 0)
		if s.Status != http.StatusOK {
			t.Fatalf("bob's sync after %s %s: %d %s", method, path, s.Status, s.Body)
		}
	})
}

// FuzzParkedSync drives the parked /sync (the path every HTTP/1.1 sync of
// the real listener takes) with a fuzzed token, since and timeout, and
// bytes pipelined behind the request, over one raw connection: the answer
// must be well-formed HTTP with a JSON body and no 5xx, whatever follows.
func FuzzParkedSync(f *testing.F) {
	in := fuzzInstance(f)
	tok := in.Sync(f, "tok-bob", "", 0).NextBatch
	f.Add("tok-bob", tok, "5", "")
	f.Add("tok-bob", "", "0", "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
	f.Add("no-such", tok, "10", "garbage\r\n\r\n")
	f.Add("tok-bob\x00", "\xff", "-1", "")
	f.Add("tok-alice", tok, "99999999999999999999", "")
	host := strings.TrimPrefix(in.URL, "http://")
	f.Fuzz(func(t *testing.T, token, since, timeout, trailer string) {
		if n, err := strconv.ParseInt(timeout, 10, 64); err == nil && n > 20 {
			timeout = "20" // a valid timeout waits: keep the fuzzer quick
		}
		q := url.Values{"since": {since}, "timeout": {timeout}}
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req := "GET /_matrix/client/v3/sync?" + q.Encode() + " HTTP/1.1\r\nHost: todeviced\r\nAuthorization: Bearer " +
			url.QueryEscape(token) + "\r\n\r\n" + trailer
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no HTTP answer: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		checkAnswer(t, "parked sync", servertest.Response{Status: resp.StatusCode, Header: resp.Header, Body: body})
	})
}
