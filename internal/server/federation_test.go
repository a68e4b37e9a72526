package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/server"
)

const (
	alice = "@alice:a.test"
	bob   = "@bob:b.test"
	carol = "@carol:c.test"
)

func TestFederationSendToRemoteDevice(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		aliceTok := a.device(alice, "A1")
		b1, b2 := b.syncer(b.device(bob, "B1")), b.syncer(b.device(bob, "B2"))

		a.send(aliceTok, "t1", map[string]map[string]any{bob: {"B1": map[string]any{"n": 1}}})
		a.send(aliceTok, "t2", map[string]map[string]any{bob: {"*": map[string]any{"n": 2}}})

		got := b1.collect(2)
		require.Equal(t, []int{1, 2}, ns(got))
		for _, e := range got {
			require.Equal(t, alice, e.Sender)
			require.Equal(t, "m.test", e.Type)
		}
		require.Equal(t, []int{2}, ns(b2.collect(1)), `"*" reaches every device of the remote user`)

		// And back.
		bobTok := b.device(bob, "B3")
		a1 := a.syncer(aliceTok)
		b.send(bobTok, "r1", map[string]map[string]any{alice: {"A1": map[string]any{"n": 3}}})
		require.Equal(t, []int{3}, ns(a1.collect(1)))

		a.idle()
		require.Empty(t, b1.once(0), "nothing arrives twice")
		require.Equal(t, 2.0, a.metricReaches("todeviced_federation_edus_sent_total", "type=m.direct_to_device", 2))
		require.Equal(t, 2.0, b.metric("todeviced_federation_edus_received_total", "type=m.direct_to_device"))
		require.Equal(t, 3.0, b.metric("todeviced_messages_enqueued_total", "origin=federation"))
	})
}

func TestFederationDestinationDownAndBack(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		aliceTok := a.device(alice, "A1")
		b1 := b.syncer(b.device(bob, "B1"))

		b.stop()
		for i := range 5 {
			a.send(aliceTok, fmt.Sprint("t", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		waitUntil(t, "A to fail at least twice", func() bool {
			return a.metric("todeviced_federation_transactions_total", "result=retry") >= 2
		})
		b.restart()

		require.Equal(t, seq(0, 5), ns(b1.collect(5)), "every message arrives once, in order")
		a.idle()
		require.Empty(t, b1.once(0), "nothing arrives twice")
	})
}

// signedClient talks to b as origin, with key.
func signedClient(t *testing.T, origin string, key matrixfed.SigningKey, b *node) *matrixfed.Client {
	res, err := matrixfed.NewResolver(matrixfed.ResolverOptions{Overrides: map[string]string{b.name: b.url}})
	require.NoError(t, err)
	c, err := matrixfed.NewClient(matrixfed.ClientOptions{ServerName: origin, Key: key, Resolver: res})
	require.NoError(t, err)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func loadKey(t *testing.T, n *node) matrixfed.SigningKey {
	key, created, err := matrixfed.LoadOrCreateSigningKey(n.cfg.SigningKey)
	require.NoError(t, err)
	require.False(t, created)
	return key
}

// toDeviceEDU is an m.direct_to_device EDU from sender with one message.
func toDeviceEDU(sender, messageID, user, device string, n int) map[string]any {
	return map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
		"sender": sender, "type": "m.test", "message_id": messageID,
		"messages": map[string]any{user: map[string]any{device: map[string]any{"n": n}}},
	}}
}

func txnBody(origin string, pdus []any, edus ...map[string]any) map[string]any {
	if pdus == nil {
		pdus = []any{}
	}
	if edus == nil {
		edus = []map[string]any{}
	}
	return map[string]any{"origin": origin, "origin_server_ts": 1700000000000, "pdus": pdus, "edus": edus}
}

func TestFederationReplayAndDuplicateMessageID(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		b1 := b.syncer(b.device(bob, "B1"))
		c := signedClient(t, a.name, loadKey(t, a), b)
		put := func(txnID string, body any) json.RawMessage {
			var resp json.RawMessage
			require.NoError(t, c.Do(testCtx(t), b.name, http.MethodPut, "/_matrix/federation/v1/send/"+txnID, nil, body, &resp))
			return resp
		}

		first := put("tx1", txnBody(a.name, nil, toDeviceEDU(alice, "m1", bob, "B1", 1)))
		require.JSONEq(t, `{"pdus":{}}`, string(first))
		again := put("tx1", txnBody(a.name, nil, toDeviceEDU(alice, "m1", bob, "B1", 1)))
		require.Equal(t, string(first), string(again), "a replay gets the first answer")
		put("tx2", txnBody(a.name, nil, toDeviceEDU(alice, "m1", bob, "B1", 1), toDeviceEDU(alice, "m2", bob, "B1", 2)))

		require.Equal(t, []int{1, 2}, ns(b1.once(0)), "the same message_id in a new transaction is stored once")
		require.Empty(t, b1.once(0))
		require.Equal(t, 1.0, b.metric("todeviced_federation_edus_dropped_total", "reason=duplicate"))

		// PDUs are answered with an error each, never accepted.
		pdu := map[string]any{"room_id": "!r:a.test", "type": "m.room.message", "sender": alice, "depth": 3,
			"origin_server_ts": 1700000000000, "content": map[string]any{"body": "hi"}, "prev_events": []any{}, "auth_events": []any{},
			"hashes": map[string]any{"sha256": "x"}}
		legacy := map[string]any{"event_id": "$legacy:a.test", "room_id": "!r:a.test", "type": "m.room.message"}
		resp := put("tx3", txnBody(a.name, []any{pdu, legacy}))
		var r struct {
			PDUs map[string]struct {
				Error string `json:"error"`
			} `json:"pdus"`
		}
		require.NoError(t, json.Unmarshal(resp, &r))
		require.Len(t, r.PDUs, 2)
		require.NotEmpty(t, r.PDUs["$legacy:a.test"].Error)
		for id, res := range r.PDUs {
			require.True(t, strings.HasPrefix(id, "$"), id)
			require.NotEmpty(t, res.Error)
		}
	})
}

// rawSend sends PUT /send/{txnId} to b with whatever Authorization sign
// produces and returns the status and errcode.
func rawSend(t *testing.T, b *node, txnID string, body []byte, sign func(*http.Request, []byte)) (int, string) {
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPut, b.url+"/_matrix/federation/v1/send/"+txnID, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	sign(req, body)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Errcode
}

func TestFederationRefusesWhatIsNotAuthentic(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, nil)
		b1 := b.syncer(b.device(bob, "B1"))
		key := loadKey(t, a)
		otherKey, err := matrixfed.GenerateSigningKey()
		require.NoError(t, err)
		forged, err := matrixfed.NewSigningKey(key.ServerKeyID, otherKey.Private.Seed())
		require.NoError(t, err)

		mustJSON := func(v any) []byte {
			b, err := json.Marshal(v)
			require.NoError(t, err)
			return b
		}
		good := mustJSON(txnBody(a.name, nil, toDeviceEDU(alice, "m1", bob, "B1", 1)))
		signAs := func(origin, destination string, k matrixfed.SigningKey) func(*http.Request, []byte) {
			return func(req *http.Request, body []byte) {
				require.NoError(t, matrixfed.SignRequest(req, origin, destination, k, body))
			}
		}
		for _, tc := range []struct {
			name    string
			body    []byte
			sign    func(*http.Request, []byte)
			status  int
			errcode string
		}{
			{"malformed header", good, func(r *http.Request, _ []byte) {
				r.Header.Set("Authorization", `X-Matrix origin="a.test",key=`)
			}, 400, "M_UNAUTHORIZED"},
			{"no header", good, func(*http.Request, []byte) {}, 401, "M_UNAUTHORIZED"},
			{"forged origin", good, signAs(a.name, b.name, forged), 401, "M_UNAUTHORIZED"},
			{"bad signature", good, func(r *http.Request, body []byte) {
				signAs(a.name, b.name, key)(r, mustJSON(txnBody(a.name, nil, toDeviceEDU(alice, "m1", bob, "B1", 666))))
			}, 401, "M_UNAUTHORIZED"},
			{"wrong destination", good, signAs(a.name, "c.test", key), 401, "M_UNAUTHORIZED"},
			{"origin in body not the signer", mustJSON(txnBody("c.test", nil, toDeviceEDU("@x:c.test", "m1", bob, "B1", 1))),
				signAs(a.name, b.name, key), 403, "M_FORBIDDEN"},
			// The header is checked (and the key found) before the body
			// is read; a well-formed one lets the body be judged.
			{"not JSON", []byte("{"), func(r *http.Request, _ []byte) {
				r.Header.Set("Authorization", matrixfed.XMatrixAuth{Origin: a.name, Destination: b.name,
					KeyID: key.ServerKeyID, Signature: matrixfed.EncodeBase64(make([]byte, 64))}.String())
			}, 400, "M_NOT_JSON"},
			{"origin is the receiver", good, signAs(b.name, b.name, key), 401, "M_UNAUTHORIZED"},
		} {
			status, errcode := rawSend(t, b, "bad-"+strings.ReplaceAll(tc.name, " ", "-"), tc.body, tc.sign)
			require.Equal(t, tc.status, status, tc.name)
			require.Equal(t, tc.errcode, errcode, tc.name)
		}

		var edus []map[string]any
		for i := range 101 {
			edus = append(edus, toDeviceEDU(alice, fmt.Sprint("many", i), bob, "B1", i))
		}
		status, errcode := rawSend(t, b, "too-many", mustJSON(txnBody(a.name, nil, edus...)), signAs(a.name, b.name, key))
		require.Equal(t, 400, status, "more than 100 EDUs")
		require.Equal(t, "M_BAD_JSON", errcode)

		// Authentic transactions with EDUs that are not: dropped, answered 200.
		status, _ = rawSend(t, b, "bad-edus", mustJSON(txnBody(a.name, nil,
			toDeviceEDU("@mallory:c.test", "m2", bob, "B1", 2),
			toDeviceEDU(alice, "m3", carol, "C1", 3),
			map[string]any{"edu_type": "m.direct_to_device", "content": "nonsense"},
			map[string]any{"edu_type": "m.typing", "content": map[string]any{}},
		)), signAs(a.name, b.name, key))
		require.Equal(t, 200, status)
		require.Equal(t, 1.0, b.metric("todeviced_federation_edus_dropped_total", "reason=sender_not_origin"))
		require.Equal(t, 1.0, b.metric("todeviced_federation_edus_dropped_total", "reason=recipient_not_local"))
		require.Equal(t, 1.0, b.metric("todeviced_federation_edus_dropped_total", "reason=malformed"))
		require.Equal(t, 1.0, b.metric("todeviced_federation_edus_received_total", "type=other"))

		require.Empty(t, b1.once(0), "nothing was enqueued")
		require.Zero(t, b.metric("todeviced_messages_enqueued_total", "origin=federation"))
	})
}

func TestFederationRejectingDestinationDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		var mu sync.Mutex
		var attempts []string
		c := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			mu.Lock()
			attempts = append(attempts, r.URL.Path+" "+string(body))
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"errcode":"M_BAD_JSON","error":"no"}`))
		}))
		t.Cleanup(c.Close)
		a, b := pair(t, db, func(cfg *server.Config) { cfg.FederationDestinations["c.test"] = c.URL })
		aliceTok := a.device(alice, "A1")
		b1 := b.syncer(b.device(bob, "B1"))

		a.send(aliceTok, "c", map[string]map[string]any{carol: {"C1": map[string]any{"n": 100}, "C2": map[string]any{"n": 101}}})
		for i := range 10 {
			a.send(aliceTok, fmt.Sprint("b", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		require.Equal(t, seq(0, 10), ns(b1.collect(10)), "the failing destination holds up nobody else")

		waitUntil(t, "the refused transaction to be dropped", func() bool {
			return a.metric("todeviced_federation_edus_dropped_total", "reason=rejected") == 1
		})
		a.idle()
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, attempts, federation.RejectAfter, "dropped after the same 4xx %d times in a row", federation.RejectAfter)
		for _, at := range attempts {
			require.Equal(t, attempts[0], at, "every attempt is the same transaction, byte for byte")
		}
		require.Equal(t, float64(federation.RejectAfter), a.metric("todeviced_federation_transactions_total", "result=rejected"))
	})
}

type feedPull struct {
	EDUs  []json.RawMessage `json:"edus"`
	Batch string            `json:"batch"`
}

// TestFederationOutboxFeed drives the feed a homeserver that sends all
// federation traffic itself uses: A runs no sender; "A's homeserver" pulls
// the outbox, hands the EDUs to "B's homeserver", which passes them to B
// through the internal API, and acknowledges.
func TestFederationOutboxFeed(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, b := pair(t, db, func(cfg *server.Config) { cfg.FederationOutbox = server.FederationOutboxFeed })
		aliceTok := a.device(alice, "A1")
		b1 := b.syncer(b.device(bob, "B1"))
		for i := range 2 {
			a.send(aliceTok, fmt.Sprint("t", i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
		}
		const feed = "/_todeviced/internal/v1/federation/outbox"
		status, body := a.do(http.MethodGet, feed+"/destinations", secret, nil)
		require.Equal(t, http.StatusOK, status)
		require.JSONEq(t, `{"destinations":["b.test"]}`, string(body))

		pull := func() feedPull {
			status, body := a.do(http.MethodGet, feed+"?destination=b.test&limit=1", secret, nil)
			require.Equal(t, http.StatusOK, status, "%s", body)
			var p feedPull
			require.NoError(t, json.Unmarshal(body, &p))
			return p
		}
		ack := func(batch string) int {
			status, body := a.do(http.MethodPost, feed+"/ack", secret, map[string]string{"batch": batch})
			require.Equal(t, http.StatusOK, status, "%s", body)
			var r struct{ Deleted int }
			require.NoError(t, json.Unmarshal(body, &r))
			return r.Deleted
		}
		for i := range 2 {
			p := pull()
			require.Len(t, p.EDUs, 1)
			require.NotEmpty(t, p.Batch)
			require.Equal(t, p, pull(), "unacknowledged EDUs are handed out again")
			status, body := b.do(http.MethodPost, "/_todeviced/internal/v1/federation/edus", secret,
				map[string]any{"origin": a.name, "edus": p.EDUs})
			require.Equal(t, http.StatusOK, status, "%s", body)
			require.Equal(t, 1, ack(p.Batch), "EDU %d", i)
			require.Zero(t, ack(p.Batch), "a batch is acknowledged once")
		}
		p := pull()
		require.Empty(t, p.EDUs)
		require.Empty(t, p.Batch)
		require.Equal(t, []int{0, 1}, ns(b1.collect(2)))
		require.Zero(t, a.metric("todeviced_federation_transactions_total", "result=ok")+
			a.metric("todeviced_federation_transactions_total", "result=retry"), "no sender runs in feed mode")
		require.Equal(t, 2.0, a.metricReaches("todeviced_federation_edus_sent_total", "type=m.direct_to_device", 2))

		status, body = a.do(http.MethodPost, feed+"/ack", secret, map[string]string{"batch": "nonsense"})
		require.Equal(t, http.StatusBadRequest, status, "%s", body)
		require.Contains(t, string(body), "M_INVALID_PARAM")
		status, _ = a.do(http.MethodGet, feed, secret, nil)
		require.Equal(t, http.StatusBadRequest, status, "destination is required")

		for _, bad := range []map[string]any{{"edus": []any{}}, {"origin": "b.test", "edus": []any{}}, {"origin": "not a name", "edus": []any{}}} {
			status, _ := b.do(http.MethodPost, "/_todeviced/internal/v1/federation/edus", secret, bad)
			require.Equal(t, http.StatusBadRequest, status, "%v", bad)
		}
	})
}

func TestFederationKeyServerAndLocalhost(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		a, _ := pair(t, db, nil)
		status, body := a.do(http.MethodGet, "/_matrix/key/v2/server", "", nil)
		require.Equal(t, http.StatusOK, status)
		var keys struct {
			ServerName string `json:"server_name"`
			VerifyKeys map[string]struct {
				Key string `json:"key"`
			} `json:"verify_keys"`
			ValidUntil int64 `json:"valid_until_ts"`
		}
		require.NoError(t, json.Unmarshal(body, &keys))
		require.Equal(t, "a.test", keys.ServerName)
		key := loadKey(t, a) // created on first start
		require.Contains(t, keys.VerifyKeys, key.ServerKeyID)
		require.NoError(t, matrixfed.VerifyJSON("a.test", key.ServerKeyID, key.Public(), body), "self-signed")
		require.Greater(t, keys.ValidUntil, time.Now().Add(time.Hour).UnixMilli())
		status, _ = a.do(http.MethodGet, "/_todeviced/internal/v1/federation/outbox/destinations", secret, nil)
		require.Equal(t, http.StatusNotFound, status, "a sending instance has no feed")

		// While the server is called localhost, federation stays off.
		cfg := nodeConfig(t, "localhost", db())
		local := start(t, cfg, listen(t, "127.0.0.1:0"))
		status, _ = local.do(http.MethodGet, "/_matrix/key/v2/server", "", nil)
		require.Equal(t, http.StatusNotFound, status)
		status, _ = local.do(http.MethodPut, "/_matrix/federation/v1/send/x", "", map[string]any{})
		require.Equal(t, http.StatusNotFound, status)
		status, _ = local.do(http.MethodPost, "/_todeviced/internal/v1/federation/edus", secret, map[string]any{"origin": "a.test"})
		require.Equal(t, http.StatusNotFound, status)
		_, err := os.Stat(cfg.SigningKey)
		require.ErrorIs(t, err, os.ErrNotExist, "no key is made for a server that does not federate")
	})
}

func TestFederationHousekeepingExpiresAndMeasures(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		cfg := nodeConfig(t, "a.test", db())
		cfg.FederationOutbox = server.FederationOutboxFeed // nothing sends: the EDUs wait
		a := start(t, cfg, listen(t, "127.0.0.1:0"))
		aliceTok := a.device(alice, "A1")
		for i := range 3 {
			a.send(aliceTok, fmt.Sprint("t", i), map[string]map[string]any{"@x:d.test": {"X": map[string]any{"n": i}}})
		}
		m := federation.NewMetrics(nil)
		later := time.Now().Add(federation.DefaultMessageTTL + 24*time.Hour)
		h := federation.NewHousekeeper(federation.HousekeeperConfig{
			Store: a.srv.Backend().Federation(), Outbox: server.ToDeviceOutbox(a.srv.Backend().Inbox()), Metrics: m,
		})
		require.NoError(t, h.RefreshGauges(testCtx(t)))
		require.Equal(t, 3.0, testutil.ToFloat64(m.OutboxEDUs))
		require.Greater(t, testutil.ToFloat64(m.OutboxOldestAge), 0.0)

		h = federation.NewHousekeeper(federation.HousekeeperConfig{
			Store: a.srv.Backend().Federation(), Outbox: server.ToDeviceOutbox(a.srv.Backend().Inbox()), Metrics: m,
			Now: func() time.Time { return later },
		})
		require.NoError(t, h.Housekeep(testCtx(t)))
		require.Equal(t, 3.0, testutil.ToFloat64(m.EDUsDropped.WithLabelValues(federation.DropExpired)))
		require.Zero(t, testutil.ToFloat64(m.OutboxEDUs))
		require.Zero(t, testutil.ToFloat64(m.OutboxOldestAge))
	})
}

// TestFederationStorageFailureIsRetried: when B cannot store a
// transaction's EDUs it answers 5xx and records nothing, so the origin's
// retry of the same transaction stores them — once.
func TestFederationStorageFailureIsRetried(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, db func() string) {
		lnA, lnB := listen(t, "127.0.0.1:0"), listen(t, "127.0.0.1:0")
		cfgA, cfgB := nodeConfig(t, "a.test", db()), nodeConfig(t, "b.test", db())
		cfgB.FederationDestinations["a.test"] = "http://" + lnA.Addr().String()
		a := start(t, cfgA, lnA)
		var failing atomic.Bool
		failing.Store(true)
		b := startWith(t, cfgB, server.Options{InboxHooks: inbox.Hooks{
			BeforeAcceptRemoteCommit: func(context.Context, []*inbox.RemoteAccept) error {
				if failing.Load() {
					return errors.New("simulated storage failure")
				}
				return nil
			},
		}}, lnB)
		b1 := b.syncer(b.device(bob, "B1"))
		c := signedClient(t, a.name, loadKey(t, a), b)
		put := func() error {
			return c.Do(testCtx(t), b.name, http.MethodPut, "/_matrix/federation/v1/send/tx1", nil,
				txnBody(a.name, nil, toDeviceEDU(alice, "m1", bob, "B1", 1)), nil)
		}

		var he *matrixfed.HTTPError
		require.ErrorAs(t, put(), &he)
		require.Equal(t, http.StatusInternalServerError, he.Status, "lost work is never answered 200")
		require.Empty(t, b1.once(0))

		failing.Store(false)
		require.NoError(t, put(), "the retry is processed, not answered from a record")
		require.NoError(t, put())
		require.Equal(t, []int{1}, ns(b1.once(0)), "stored once")
	})
}
