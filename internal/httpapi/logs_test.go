package httpapi_test

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// lockedBuffer collects log output written by the server's goroutines.
type lockedBuffer = servertest.LockedBuffer

// Logs carry one line per request with the route pattern, status and
// duration, and never an access token, a message's content or the raw path
// (which holds user ids and transaction ids), whichever way they arrive.
func TestLogsNeverHoldTokensOrContent(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		const (
			aliceTok = "syt_SECRET_alice_token_5a7e"
			bobTok   = "syt_SECRET_bob_token_91c2"
			content  = "CONTENT-olm-ciphertext-3f1d"
			txnID    = "TXNID-raw-path-77aa"
		)
		var logs lockedBuffer
		log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		in := servertest.StartLogged(t, servertest.Config(b.NewURL(t)), server.Options{}, log)
		in.PutDevice(t, alice, "A1", aliceTok)
		in.PutDevice(t, bob, "B1", bobTok)

		// The token in the Authorization header.
		first := in.Sync(t, bobTok, "", 0)
		in.Send(t, aliceTok, "m.room.encrypted", txnID, map[string]map[string]any{bob: {"B1": map[string]any{"ciphertext": content}}})
		// The token in the deprecated access_token query parameter.
		r := in.Do(t, http.MethodGet, "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(first.NextBatch)+"&access_token="+bobTok, "", nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.Contains(t, string(r.Body), content, "the message was delivered, so its content passed through the server")
		r = in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.room.encrypted/"+txnID+"-q?access_token="+aliceTok, "",
			map[string]any{"messages": map[string]any{bob: map[string]any{"B1": map[string]any{"ciphertext": content}}}})
		require.Equal(t, http.StatusOK, r.Status)
		// Failures log too: a wrong token, a malformed body holding content.
		require.Equal(t, http.StatusUnauthorized, in.Do(t, http.MethodGet, "/_matrix/client/v3/sync?access_token=syt_SECRET_unknown", "", nil).Status)
		require.Equal(t, http.StatusBadRequest, in.Do(t, http.MethodPut, "/_matrix/client/v3/sendToDevice/m.x/"+txnID+"-bad", aliceTok,
			`{"messages": "`+content+`"}`).Status)
		in.Stop(t)

		out := logs.String()
		for _, secret := range []string{"SECRET", content, txnID} {
			require.NotContains(t, out, secret, "logs must not hold %q", secret)
		}

		// One JSON line per request with route pattern, status and duration.
		var requests []map[string]any
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var line map[string]any
			require.NoError(t, json.Unmarshal(sc.Bytes(), &line), "every log line is JSON: %s", sc.Text())
			if line["msg"] == "request" {
				requests = append(requests, line)
			}
		}
		require.Len(t, requests, 8, "one line per request")
		var sends int
		for _, l := range requests {
			require.Contains(t, l, "duration_ms")
			require.Contains(t, l, "status")
			route, _ := l["route"].(string)
			require.True(t, strings.HasPrefix(route, "/_matrix/client/") || strings.HasPrefix(route, "/_todeviced/internal/"), "route %q", route)
			if route == "/_matrix/client/v3/sendToDevice/{eventType}/{txnId}" && l["status"] == 200.0 {
				sends++
			}
		}
		require.Equal(t, 2, sends, "routes are chi patterns, with placeholders for the ids")
	})
}
