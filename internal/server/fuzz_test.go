package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/testdb"
)

// FuzzFederationSend drives B's federation /send with transactions that A
// really signed and with arbitrary X-Matrix headers, between two real
// instances on SQLite. The property (DESIGN invariants 12-14): no input
// earns a 5xx (the origin would retry it forever) or kills B, every answer
// is JSON, and B's own devices keep syncing.
func FuzzFederationSend(f *testing.F) {
	edu := func(content string) []byte {
		return []byte(`{"origin":"a.test","origin_server_ts":1,"pdus":[],"edus":[{"edu_type":"m.direct_to_device","content":` + content + `}]}`)
	}
	for _, body := range [][]byte{
		edu(`{"sender":"@alice:a.test","type":"m.test","message_id":"m1","messages":{"@bob:b.test":{"B1":{"n":1}}}}`),
		edu(`{"sender":"@alice:a.test","type":"m.test","message_id":"m2","messages":{"@bob:b.test":{"X\u0000":{"n":1}}}}`),
		edu(`{"sender":"@alice:a.test","type":"m.t\u0000","message_id":"m3","messages":{"@bob:b.test":{"B1":{}}}}`),
		edu(`{"sender":"@alice:a.test","type":"m.test","message_id":"m\u00004","messages":{"@bob:b.test":{"*":{}}}}`),
		edu(`{"sender":"@alice:a.test","type":"m.test","message_id":"m5","messages":{"@bob:b.test":{"B1":` + deepJSON(40) + `}}}`),
		edu(`{"sender":"@alice:a.test","type":"m.test","message_id":"m6","messages":{"@bob:B.TEST":{"B1":{}}}}`),
		[]byte(`{"origin":"a.test","pdus":[{"type":"m.room.message"}],"edus":[{"edu_type":"m.device_list_update","content":{"user_id":"@alice:a.test","device_id":"D\u0000","stream_id":1}}]}`),
		[]byte(`{"origin":"a.test","pdus":[],"edus":[` + string(bytes.Repeat([]byte(`{},`), 200)) + `{}]}`),
		[]byte(`not json`),
		[]byte(`{"x":` + deepJSON(100) + `}`),
	} {
		f.Add("tx", body, `X-Matrix origin="a.test",destination="b.test",key="ed25519:x",sig="AAAA"`)
	}
	f.Add("tx\x00", []byte(`{}`), `X-Matrix origin="a.test\x00",key="ed25519:1",sig="x"`)
	f.Add("tx", []byte(`{}`), `X-Matrix origin=A.TEST,key="ed25519:1",sig="x"`)

	// The receiver runs on PostgreSQL where one is configured (it refuses
	// NUL and invalid UTF-8 that SQLite would store), else on SQLite.
	dir := f.TempDir()
	n := 0
	db := func() string {
		n++
		if _, err := testdb.Available(); err == nil && n == 2 {
			return testdb.New(f)
		}
		return "sqlite:" + filepath.Join(dir, "db"+string(rune('0'+n)))
	}
	a, b := pair(f, db, nil)
	key, _, err := matrixfed.LoadOrCreateSigningKey(a.cfg.SigningKey)
	if err != nil {
		f.Fatal(err)
	}
	bobTok := b.device("@bob:b.test", "B1")
	client := &http.Client{}
	check := func(t *testing.T, what string, resp *http.Response) {
		t.Helper()
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		if resp.StatusCode >= 500 {
			t.Fatalf("%s: %d %s", what, resp.StatusCode, buf.Bytes())
		}
		if !json.Valid(buf.Bytes()) || !utf8.Valid(buf.Bytes()) {
			t.Fatalf("%s: answer is not JSON: %q", what, buf.Bytes())
		}
	}
	f.Fuzz(func(t *testing.T, txnID string, body []byte, header string) {
		target := b.url + "/_matrix/federation/v1/send/" + url.PathEscape(txnID)
		// Signed by A for real: only the content is hostile.
		req, err := http.NewRequest(http.MethodPut, target, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		if matrixfed.SignRequest(req, "a.test", "b.test", key, body) == nil {
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("signed /send: %v", err)
			}
			check(t, "signed /send", resp)
		}
		// The same body under an arbitrary authorization header.
		req, _ = http.NewRequest(http.MethodPut, target, bytes.NewReader(body))
		req.Header.Set("Authorization", header)
		if req.Header.Get("Authorization") == header {
			resp, err := client.Do(req)
			if err == nil {
				check(t, "forged /send", resp)
			}
		}
		// B's devices still sync.
		req, _ = http.NewRequest(http.MethodGet, b.url+"/_matrix/client/v3/sync?timeout=0", nil)
		req.Header.Set("Authorization", "Bearer "+bobTok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("bob's sync: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("bob's sync: %d", resp.StatusCode)
		}
	})
}

func deepJSON(n int) string {
	return string(bytes.Repeat([]byte("["), n)) + string(bytes.Repeat([]byte("]"), n))
}
